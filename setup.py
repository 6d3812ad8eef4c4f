"""Packages of the wheel: backbones, classification, detection, engine, tools, the recipes of `configs/` as
package data under `engine/recipes/` (configs/ stays at the top of the checkout, where the docs point), and the
sample photograph of `detection/assets/`."""

from setuptools import find_packages, setup

RECIPE_FOLDERS = ("classification", "detection", "demo")

setup(
    packages=[*find_packages(include=["backbones*", "classification*", "detection*", "engine*", "tools*"]),
              "engine.recipes", *(f"engine.recipes.{folder}" for folder in RECIPE_FOLDERS)],
    package_dir={"engine.recipes": "configs"},
    package_data={"engine.recipes": [f"{folder}/*.yaml" for folder in RECIPE_FOLDERS],
                  "detection": ["assets/*.jpg", "assets/*.md"]},
)
