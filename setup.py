"""d2kd: knowledge distillation for object detection, as a Detectron2 project.

detectron2 itself is not on PyPI, so it is not listed here: install it from its official
repository first (see README.md, "Install").
"""
from setuptools import find_packages, setup

setup(
    name="d2kd",
    version="0.1.0",
    description="Knowledge distillation for object detection on Detectron2",
    packages=find_packages(include=["d2kd", "d2kd.*"]),
    # the checkpoints d2kd ships (the benchmark's quick mode continues from them)
    package_data={"d2kd.model_zoo": ["README.md", "shapes/*.pth", "shapes/*.json"]},
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "fvcore>=0.1.5",
        "pycocotools>=2.0.2",
        # The headless build: same `cv2` module, no libGL. d2kd never opens a window (pictures are
        # written to files); requiring `opencv-python` installed a second cv2 beside the pinned
        # headless one.
        "opencv-python-headless",
        "matplotlib",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "hypothesis"],
        # python3 -m d2kd.deploy: ONNX export (onnx) and running the exported model (onnxruntime).
        "deploy": ["onnx", "onnxruntime"],
    },
)
