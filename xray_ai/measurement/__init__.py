"""Measurement models: the cardiothoracic ratio from a segmentation network's heart and
thorax masks (`ctr`), the network itself (`network`)."""
