"""policy.yaml `rate_limits`: the gateway's per-department limits, checked with the policy."""

from __future__ import annotations

import pytest

from civicbus.config import load_city
from civicbus.policy import PolicyError, RateLimit, load_policy
from civicbus.schemas import EventCatalog
from civicbus.settings import REPO_ROOT
from tests.support import private_config


def load(tmp_path, section: str):
    config = private_config(tmp_path)
    policy = config / "policy.yaml"
    text = policy.read_text(encoding="utf-8")
    policy.write_text(text[: text.index("rate_limits:")] + section, encoding="utf-8")
    return load_policy(policy, load_city(config), EventCatalog(REPO_ROOT / "schemas"))


def test_a_department_entry_overrides_the_default(tmp_path):
    policy = load(tmp_path, "rate_limits:\n  default: {publish_per_s: 5, publish_burst: 10}\n  police: {publish_per_s: 100, publish_burst: 200, concurrent_reads: 4}\n")
    assert policy.rate_limit("police") == RateLimit(publish_per_s=100, publish_burst=200, concurrent_reads=4)
    assert policy.rate_limit("citymgmt") == RateLimit(publish_per_s=5, publish_burst=10)


@pytest.mark.parametrize("section, message", [
    ("rate_limits:\n  ministry: {publish_per_s: 1}\n", "rate limits for departments without a policy entry: ministry"),
    ("rate_limits:\n  default: {publish_per_s: 0}\n", "greater than 0"),
])
def test_a_bad_rate_limit_is_refused_naming_its_line(tmp_path, section, message):
    with pytest.raises(PolicyError, match=message) as refused:
        load(tmp_path, section)
    assert "policy.yaml:" in str(refused.value)
