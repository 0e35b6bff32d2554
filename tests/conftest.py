import os
import pathlib

import pytest
import torch

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
FIXTURES = pathlib.Path(os.environ.get("STYLEMIX_FIXTURES", SHARED / "fixtures"))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models gain nothing from threads, and on a shared, busy CPU every parallel region waits
    for a descheduled worker; modules of small-model tests run on one thread, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"reference fixtures not found at {FIXTURES}")
    return FIXTURES


def load_fixture_generator(fixtures_dir: pathlib.Path, name: str = "sg2ada_tiny32"):
    """The official tiny generator of a fixture, as our Generator loaded with strict=True, in eval mode."""
    import json

    from safetensors.torch import load_file

    from stylemix.networks.stylegan2 import Generator

    kwargs = json.loads((fixtures_dir / f"{name}.json").read_text())["G_kwargs"]
    tensors = load_file(str(fixtures_dir / f"{name}.safetensors"))
    G = Generator(**kwargs)
    G.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("G.")}, strict=True)
    return G.eval()


@pytest.fixture(scope="module")
def tiny32_G(fixtures_dir):
    """A fresh tiny official 32x32 generator per test module."""
    return load_fixture_generator(fixtures_dir)
