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
    python_requires=">=3.9",
    install_requires=[
        "torch>=2.0",
        "torchvision>=0.15",
        "fvcore>=0.1.5",
        "pycocotools>=2.0.2",
        "opencv-python",
        "matplotlib",
    ],
    extras_require={"test": ["pytest", "pytest-timeout", "hypothesis"]},
)
