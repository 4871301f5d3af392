"""T5 v1.1 XXL encoder (google/t5-v1_1-xxl config, as shipped in FLUX.1 and SD3 text_encoder_3)."""

T5_XXL = {
    "architectures": ["T5EncoderModel"], "d_ff": 10240, "d_kv": 64, "d_model": 4096, "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu", "initializer_factor": 1.0,
    "is_encoder_decoder": True, "is_gated_act": True, "layer_norm_epsilon": 1e-06, "model_type": "t5",
    "num_decoder_layers": 24, "num_heads": 64, "num_layers": 24, "output_past": True, "pad_token_id": 0,
    "relative_attention_max_distance": 128, "relative_attention_num_buckets": 32, "tie_word_embeddings": False,
    "vocab_size": 32128,
}
T5_TINY = {**T5_XXL, "d_ff": 37, "d_kv": 8, "d_model": 32, "num_decoder_layers": 2, "num_heads": 4, "num_layers": 2,
           "relative_attention_num_buckets": 8}
