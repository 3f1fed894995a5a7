"""The installed environment is consistent: what ``pip install -e .`` adds does not fight the
pinned requirements (one OpenCV, every requirement of d2kd satisfied)."""
import importlib.metadata
import os
import subprocess
import sys

from conftest import REPO


def test_one_distribution_provides_cv2():
    # opencv-python and opencv-python-headless both install `cv2`: with both, whichever was
    # installed last silently wins and uninstalling one breaks the other.
    providers = importlib.metadata.packages_distributions().get("cv2", [])
    assert len(set(providers)) == 1, f"cv2 is provided by {sorted(set(providers))}"


def test_setup_requires_the_pinned_opencv_build():
    with open(os.path.join(REPO, "requirements-ci.txt")) as f:
        pinned = [l.split("==")[0].strip() for l in f if l.strip().startswith("opencv")]
    requires = importlib.metadata.requires("d2kd") or []
    opencv = [r.split(";")[0].split(">")[0].split("=")[0].strip() for r in requires if r.startswith("opencv")]
    assert opencv == pinned == ["opencv-python-headless"], (opencv, pinned)


def test_pip_check_is_clean():
    proc = subprocess.run([sys.executable, "-m", "pip", "check"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
