"""What a request may add to SD1.5 besides the prompt and the identity: ControlNet conditioning images
(conditioning.py; the pose editor's OpenPose renderer and canny preprocessing live beside it) and LoRA sets."""
