"""The networks: video backbones (R3D, R(2+1)D, C3D) and the projection heads of every method."""
