"""DeepLabV3+ networks: MobileNetV2 and Xception backbones, ASPP, decoder and losses."""
