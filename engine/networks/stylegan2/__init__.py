"""StyleGAN2-FFHQ-1024 generator of `e4e_ffhq_encode.pt` in plain PyTorch (the W+ face preview's network).

Semantics: `/work/shared/spec/STYLEGAN2.md` (rosinality's port as used by e4e), called as
`decoder([W], input_is_latent=True, randomize_noise=False)`.

- `ops.py`: the two custom ops (`upfirdn2d`, fused bias + leaky ReLU) written with ordinary torch ops;
- `modules.py`: the nn.Modules (`StyleGAN2Generator`, `PreviewModule`) with the official parameter names;
- `loader.py`: a decoder state dict → a strictly loaded generator.

The product that renders W+ codes through it (preview levels, stage cache, uint8 images) is
`engine.pipeline.face_preview`; its ONNX export is `export.stylegan_preview`.
"""
