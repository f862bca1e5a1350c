"""Strict config: every error names the file and the key."""

from __future__ import annotations

import pytest

from proxy._config import ConfigError, load_config, parse_config
from proxy._policy import compile_policy

HEAD = '[policy]\nstate = "CA"\nlocal_ori = "CA0000000"\n'


def error_of(text: str) -> str:
    with pytest.raises(ConfigError) as info:
        compile_policy(parse_config(text, "site.toml"), "site.toml")
    return str(info.value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (HEAD + "colour = 1\n", ["site.toml", "colour", "policy"]),
        (HEAD + "[proxy]\nmax_frame = \"big\"\n", ["site.toml", "proxy.max_frame"]),
        (HEAD + "[proxy]\nmax_frame = 0\n", ["site.toml", "proxy.max_frame"]),
        (HEAD + "[proxy]\nframing = \"slip\"\n", ["site.toml", "proxy.framing"]),
        (HEAD + "[proxy]\nupstream = \"nohost\"\n", ["site.toml", "upstream"]),
        (HEAD + "mode = \"audit\"\n", ["site.toml", "policy.mode"]),
        ('[policy]\nstate = "California"\nlocal_ori = "CA0000000"\n', ["site.toml", "state"]),
        ("[proxy]\n", ["site.toml", "policy"]),
        (HEAD + "[groups.g]\nori = [\"AB*C\"]\n", ["site.toml", "groups.g", "AB*C"]),
        (HEAD + "[groups.g]\nori = [\"vtice0900\"]\n", ["site.toml", "vtice0900"]),
        (HEAD + "[groups.g]\nori = [\"ABCDE\"]\n", ["site.toml", "ABCDE"]),
        (HEAD + '[[rules]]\nid = "r"\naction = "deny"\nagency = ["@nobody"]\n',
         ["site.toml", "rules[0].agency", "@nobody"]),
        (HEAD + '[[rules]]\nid = "r"\naction = "deny"\nmke = ["@boats"]\n',
         ["site.toml", "rules[0].mke", "@boats"]),
        (HEAD + '[[rules]]\nid = "r"\naction = "deny"\n[[rules]]\nid = "r"\naction = "allow"\n',
         ["site.toml", "rules[1]", "duplicate", "'r'"]),
        (HEAD + '[[rules]]\nid = "r"\naction = "block"\n', ["site.toml", "rules[0].action"]),
        (HEAD + '[[rules]]\nid = "r"\naction = "deny"\npurpose = ["c"]\n', ["site.toml", "rules[0]", "purpose"]),
        (HEAD + '[[rules]]\nid = "r"\naction = "deny"\nmke = ["DQ1"]\n', ["site.toml", "rules[0]", "mke"]),
        (HEAD + '[[rules]]\nid = "r"\naction = "deny"\nattention = "absent"\n', ["site.toml", "rules[0].attention"]),
        (HEAD + '[[rules]]\nid = "r"\naction = "deny"\nwho = 1\n', ["site.toml", "who", "rules[0]"]),
        (HEAD + '[[rules]]\nid = "r"\naction = "deny"\nagency = []\n', ["site.toml", "agency", "empty"]),
        (HEAD + '[categories]\nboats = ["B1"]\n', ["site.toml", "boats"]),
        (HEAD + "[log\n", ["site.toml", "TOML"]),
    ],
)
def test_errors_name_the_file_and_the_key(text, expected):
    message = error_of(text)
    for part in expected:
        assert part in message, message


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "none.toml")


def test_defaults_and_categories():
    text = HEAD + '[categories]\nboats = ["BQ", "BR"]\ndmv = ["DQ"]\n' \
        '[[rules]]\nid = "r"\naction = "deny"\nmke = ["@boats", "@dmv", "XQ"]\n'  # fmt: skip
    config = parse_config(text, "site.toml")
    assert config.proxy.framing == "len32"
    assert config.proxy.max_frame == 1 << 20
    assert config.proxy.terminator == "\r\n\x7f"
    policy = compile_policy(config)
    assert policy.default == "allow" and policy.mode == "enforce" and policy.deny_reply
    # config categories add to and override the built-in ones
    assert policy.rules[0].mke == ("BQ", "BR", "DQ", "XQ")
    assert policy.rules[0].direction == "in"


def test_rev_names_the_policy_not_the_proxy_settings():
    a = compile_policy(parse_config(HEAD + "[proxy]\nmax_frame = 10\n"))
    b = compile_policy(parse_config(HEAD + "[proxy]\nmax_frame = 20\n"))
    c = compile_policy(parse_config(HEAD + 'default = "deny"\n'))
    assert a.rev == b.rev
    assert a.rev != c.rev
    assert len(a.rev) == 64


def test_example_policy_is_valid():
    from proxy._demo import EXAMPLE_POLICY

    policy = compile_policy(load_config(EXAMPLE_POLICY))
    assert [r.id for r in policy.rules][0] == "no-dmv-for-immigration"
