import json

import pytest

from helpers import TINY


@pytest.fixture
def tiny_spec():
    return json.loads(json.dumps(TINY))
