"""The demo configuration of gateway.testing: one builder, as an object or as a file."""

from __future__ import annotations

from pathlib import Path

from gateway.agent import load_config
from gateway.testing import demo_config, write_demo_config


def test_demo_config_is_the_shipped_demo_at_the_chosen_pace() -> None:
    shipped = load_config(Path("gateway/configs/demo.yaml").resolve(), {"llm.pace_ms": 7})
    assert demo_config(7) == shipped
    assert demo_config(7).main_agent.llm.pace_ms == 7.0
    assert list(demo_config().sub_agents) == ["agent-worker"]


def test_overrides_take_short_names_and_dotted_keys() -> None:
    config = demo_config(0, max_turns=3, **{"sub_agents": {}, "llm.provider": "openai"})
    assert config.main_agent.max_turns == 3
    assert config.main_agent.llm.provider == "openai"
    assert dict(config.sub_agents) == {}


def test_the_file_loads_as_the_same_config(tmp_path: Path) -> None:
    plain = write_demo_config(tmp_path, 5)
    custom = write_demo_config(tmp_path, 5, max_turns=2)
    named = write_demo_config(tmp_path, 5, name="mine.yaml")
    assert len({plain, custom, named}) == 3
    assert Path(named).name == "mine.yaml"
    assert load_config(plain) == demo_config(5)
    assert load_config(custom) == demo_config(5, max_turns=2)
