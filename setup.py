"""vispre: self-supervised vision pretraining (MAE, contrastive, multi-head) on timm ViTs."""

from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent


def requirements(name: str) -> list[str]:
    lines = (HERE / name).read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


setup(
    name="vispre",
    version="0.1.0",
    description="Self-supervised vision pretraining on timm ViTs: MAE, contrastive, AMCL, growth, evaluation",
    long_description=(HERE / "README.md").read_text() if (HERE / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=find_packages(include=["vispre", "vispre.*"]),
    install_requires=requirements("requirements.txt"),
    extras_require={"dev": requirements("requirements-dev.txt")},
    entry_points={"console_scripts": ["vispre=vispre.commands:main"]},
)
