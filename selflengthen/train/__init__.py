"""LoRA SFT of the Generator and the Extender with TRL, adapter continuation, merge for serving."""
