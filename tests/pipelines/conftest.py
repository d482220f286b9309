import pytest


@pytest.fixture(scope="module")
def pipe(request):
    """The test module's pipeline on its default tiny components (its `make_pipe()`), built once."""
    return request.module.make_pipe()
