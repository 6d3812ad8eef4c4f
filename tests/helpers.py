"""Small builders shared by the tests."""

import os
import pickle
from pathlib import Path


def voc_xml(objects, width=60, height=40, filename="x.jpg"):
    body = "".join(f"<object><name>{n}</name><difficult>{int(d)}</difficult><bndbox><xmin>{b[0]}</xmin>"
                   f"<ymin>{b[1]}</ymin><xmax>{b[2]}</xmax><ymax>{b[3]}</ymax></bndbox></object>"
                   for n, b, d in objects)
    return (f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height>"
            f"<depth>3</depth></size>{body}</annotation>")


class _Poison:
    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def write_poisoned_pickle(path: Path, wrap, target: Path) -> None:
    """A pickle (protocol 2, as the model zoo and CIFAR use) whose loading would run `touch target`;
    `wrap(payload)` places the payload where a real file keeps its arrays."""
    with open(path, "wb") as f:
        pickle.dump(wrap(_Poison(target)), f, protocol=2)
