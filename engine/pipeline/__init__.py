"""Generation: the denoising loop over backend runners, schedulers, step cache, previews, PNG metadata."""
