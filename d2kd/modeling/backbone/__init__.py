from .resnet import make_resnet_stages, resnet_out_channels  # noqa: F401
from .vgg import VGG, LastLevelMaxPoolFrom, add_vgg_config, build_vgg_backbone, build_vgg_fpn_backbone, build_retinanet_vgg_fpn_backbone, convert_torchvision_vgg  # noqa: F401,E501
from . import mobilenetv2_ssdlite, ssd_vgg  # noqa: F401  (SSD backbones: MobileNetV2SSDLite, VGG16SSD)
