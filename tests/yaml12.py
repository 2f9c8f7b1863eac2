"""PyYAML with YAML 1.2's booleans, as cnetctl reads manifests: only true/false are booleans.
PyYAML's YAML 1.1 reads the key `on:` (the machine a node lives on) as True."""

from __future__ import annotations

import re

import yaml


class Yaml12Loader(yaml.SafeLoader):
    pass


Yaml12Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
Yaml12Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                                   list("tTfF"))


def load(text: str) -> object:
    return yaml.load(text, Loader=Yaml12Loader)
