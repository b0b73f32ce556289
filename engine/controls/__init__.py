"""Control images for ControlNets: OpenPose skeletons, canny edges (numpy + OpenCV, no torch)."""
