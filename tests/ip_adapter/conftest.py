import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def _one_thread():
    # the test machine is shared; one intra-op thread avoids oversubscription on tiny models
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
