from .resnet import make_resnet_stages, resnet_out_channels  # noqa: F401
