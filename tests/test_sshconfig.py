"""The paths `~/.ssh/config` names: every key must be found, and no config file can crash stockade."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from stockade.sshconfig import MAX_DEPTH, SshPath, ssh_config_paths


class Setup:
    """A home with `.ssh/` and a system config directory, both under tmp_path (never the host's)."""

    def __init__(self, tmp: Path) -> None:
        self.home = tmp / "home"
        self.ssh = self.home / ".ssh"
        self.ssh.mkdir(parents=True)
        self.etc = tmp / "etc" / "ssh"
        self.etc.mkdir(parents=True)
        self.system = self.etc / "ssh_config"

    def write(self, path: Path, text: str | bytes) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(text, bytes):
            path.write_bytes(text)
        else:
            path.write_text(text)
        return path

    def config(self, text: str | bytes) -> Path:
        return self.write(self.ssh / "config", text)

    def run(self, env: Mapping[str, str] | None = None) -> tuple[tuple[SshPath, ...], tuple[str, ...]]:
        return ssh_config_paths(
            str(self.home), env or {}, user="alice", uid=1000, system_config=str(self.system)
        )

    def paths(self, env: Mapping[str, str] | None = None) -> list[str]:
        return [p.path for p in self.run(env)[0]]

    def h(self, rel: str) -> str:
        return os.path.join(self.home, rel)


@pytest.fixture
def s(tmp_path: Path) -> Setup:
    return Setup(tmp_path)


def test_no_config_at_all_is_quiet(s: Setup) -> None:
    assert s.run() == ((), ())


def test_identity_files_in_config_and_globbed_relative_include(s: Setup) -> None:
    main = s.config("IdentityFile ~/.ssh/id_main\nInclude conf.d/*\n")
    a = s.write(s.ssh / "conf.d" / "a.conf", "Host work\n  IdentityFile ~/.keys/x\n")
    s.write(s.ssh / "conf.d" / "b.conf", "Match host *.example\n  IdentityFile ~/.ssh/b\n")
    paths, notes = s.run()
    assert [p.path for p in paths] == [s.h(".ssh/id_main"), s.h(".keys/x"), s.h(".ssh/b")]
    assert paths[0].origin == f"{main}:1"
    assert paths[1].origin == f"{a}:2"
    assert {p.keyword for p in paths} == {"IdentityFile"}
    assert notes == ()


def test_keyword_value_syntax_quotes_and_trailing_text(s: Setup) -> None:
    s.config(
        "# a comment\n"
        "\n"
        "   \t\n"
        "IdentityFile=~/.ssh/eq\n"
        "identityfile = ~/.ssh/spaced_eq\n"
        'IDENTITYFILE "~/my keys/id one" trailing words\n'
        "  IdentityFile\t~/.ssh/tab   # comment after\n"
        "IdentityFile ~/.ssh/hash#inside\n"
    )
    assert s.paths() == [
        s.h(".ssh/eq"),
        s.h(".ssh/spaced_eq"),
        s.h("my keys/id one"),
        s.h(".ssh/tab"),
        s.h(".ssh/hash#inside"),
    ]


def test_none_means_nothing(s: Setup) -> None:
    s.config(
        "IdentityFile none\nCertificateFile NONE\nControlPath none\nIdentityAgent None\n"
        "UserKnownHostsFile none\nRevokedHostKeys none\n"
    )
    assert s.run() == ((), ())


def test_percent_tokens(s: Setup) -> None:
    s.config(
        "IdentityFile %d/.ssh/id_%u\n"
        "IdentityFile ~/.ssh/%h_%r@%p\n"
        "IdentityFile /keys/%i/100%%\n"
        "IdentityFile /keys/%Z-%n-%C-%l-%L-%k-%j-%T\n"
    )
    assert s.paths() == [
        s.h(".ssh/id_alice"),
        s.h(".ssh/*_*@*"),
        "/keys/1000/100%",
        "/keys/*-*-*-*-*-*-*-*",
    ]


def test_environment_variables(s: Setup) -> None:
    main = s.config("IdentityFile ${KEYS}/id\nIdentityFile ${UNSET_VAR}/id\nIdentityFile ~/.ssh/after\n")
    paths, notes = s.run({"KEYS": "/srv/keys"})
    assert [p.path for p in paths] == ["/srv/keys/id", s.h(".ssh/after")]
    assert len(notes) == 1
    assert f"{main}:2" in notes[0]
    assert "UNSET_VAR" in notes[0]


def test_relative_paths_are_under_home_and_normalized(s: Setup) -> None:
    s.config("IdentityFile keys/rel\nIdentityFile ~/.ssh/../.ssh//norm\nIdentityFile ~\n")
    assert s.paths() == [s.h("keys/rel"), s.h(".ssh/norm"), str(s.home)]


def test_duplicates_reported_once_with_first_origin(s: Setup) -> None:
    main = s.config("IdentityFile ~/.ssh/id\nHost a\n  IdentityFile %d/.ssh/id\nInclude x x\n")
    s.write(s.ssh / "x", "IdentityFile ~/.ssh/id\n")
    paths, notes = s.run()
    assert [(p.path, p.origin) for p in paths] == [(s.h(".ssh/id"), f"{main}:1")]
    assert notes == ()


def test_include_loop_terminates_with_a_note(s: Setup) -> None:
    s.config("Include a\n")
    s.write(s.ssh / "a", "IdentityFile ~/.ssh/ka\nInclude b\n")
    b = s.write(s.ssh / "b", "IdentityFile ~/.ssh/kb\nInclude ~/.ssh/a\n")
    paths, notes = s.run()
    assert [p.path for p in paths] == [s.h(".ssh/ka"), s.h(".ssh/kb")]
    assert len(notes) == 1
    assert "loop" in notes[0]
    assert notes[0].startswith(f"{b}:2:")


def test_self_include_through_symlink_is_a_loop(s: Setup) -> None:
    s.config("IdentityFile ~/.ssh/k\nInclude alias\n")
    (s.ssh / "alias").symlink_to(s.ssh / "config")
    paths, notes = s.run()
    assert [p.path for p in paths] == [s.h(".ssh/k")]
    assert len(notes) == 1
    assert "loop" in notes[0]


def test_include_depth_is_capped(s: Setup) -> None:
    s.config("Include f0\n")
    for i in range(MAX_DEPTH + 4):
        s.write(s.ssh / f"f{i}", f"IdentityFile ~/.ssh/k{i}\nInclude f{i + 1}\n")
    paths, notes = s.run()
    assert len(paths) == MAX_DEPTH
    assert len(notes) == 1
    assert "deeper" in notes[0]


def test_unreadable_missing_and_directory_includes(s: Setup) -> None:
    main = s.config(
        "Include broken\nInclude missing nothing/*\nInclude somedir\nInclude fifo\nIdentityFile ~/.ssh/ok\n"
    )
    (s.ssh / "broken").symlink_to(s.ssh / "does-not-exist")
    (s.ssh / "somedir").mkdir()
    os.mkfifo(s.ssh / "fifo")  # must not block
    paths, notes = s.run()
    assert [p.path for p in paths] == [s.h(".ssh/ok")]
    assert len(notes) == 2
    assert notes[0].startswith(f"{main}:1:")
    assert "broken" in notes[0]
    assert notes[1].startswith(f"{main}:4:")
    assert "not a regular file" in notes[1]


def test_permission_denied_config_is_a_note(s: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    main = s.config("IdentityFile ~/.ssh/k\n")
    real_open = os.open

    def refuse(path: str, *args: int, **kwargs: int) -> int:
        if path == str(main):  # chmod 000 would not stop root, so refuse the open itself
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    paths, notes = s.run()
    assert paths == ()
    assert len(notes) == 1
    assert notes[0].startswith(f"{main}: cannot read")
    assert "Permission denied" in notes[0]


def test_config_that_is_a_directory_is_ignored(s: Setup) -> None:
    (s.ssh / "config").mkdir()
    assert s.run() == ((), ())


def test_malformed_lines_and_binary_garbage(s: Setup) -> None:
    main = s.config(
        b"IdentityFile\n"
        b"IdentityFile=\n"
        b'IdentityFile "~/.ssh/unterminated\n'
        b"\xff\xfe\x00\x01garbage\x00IdentityFile /x\n"
        b"\x00\x00\x00\n"
        b"=\n"
        b"UnknownKeyword whatever\n"
        b"IdentityFile ~/.ssh/caf\xe9\n"
        b"IdentityFile ~/.ssh/cut\x00/after-nul\n"
        b"IdentityFile ~/.ssh/good\r\n"
    )
    paths, notes = s.run()
    assert [p.path for p in paths] == [s.h(".ssh/caf\ufffd"), s.h(".ssh/cut"), s.h(".ssh/good")]
    assert [n.split(": ", 1)[0] for n in notes] == [f"{main}:1", f"{main}:2", f"{main}:3"]
    assert "no value" in notes[0]
    assert "unterminated" in notes[2]


def test_known_hosts_and_revoked_keys_are_not_secret(s: Setup) -> None:
    s.config(
        "UserKnownHostsFile ~/.ssh/kh1 ~/.ssh/kh2\n"
        "GlobalKnownHostsFile /etc/kh_a /etc/kh_b\n"
        "RevokedHostKeys ~/.ssh/revoked ignored\n"
    )
    paths, _ = s.run()
    assert [(p.path, p.keyword) for p in paths] == [
        (s.h(".ssh/kh1"), "UserKnownHostsFile"),
        (s.h(".ssh/kh2"), "UserKnownHostsFile"),
        ("/etc/kh_a", "GlobalKnownHostsFile"),
        ("/etc/kh_b", "GlobalKnownHostsFile"),
        (s.h(".ssh/revoked"), "RevokedHostKeys"),
    ]
    assert not any(p.secret for p in paths)


def test_certificates_sockets_and_agents_are_secret(s: Setup) -> None:
    s.config(
        "certificatefile ~/.ssh/id-cert.pub\n"
        "ControlPath ~/.ssh/cm-%C\n"
        "IdentityAgent SSH_AUTH_SOCK\n"
        "IdentityAgent $MY_SOCK\n"
        'IdentityAgent "~/Library/Group Containers/agent.sock"\n'
    )
    env = {"SSH_AUTH_SOCK": "/run/user/1000/agent.sock", "MY_SOCK": "/run/my.sock"}
    paths, notes = s.run(env)
    assert [(p.path, p.keyword) for p in paths] == [
        (s.h(".ssh/id-cert.pub"), "CertificateFile"),
        (s.h(".ssh/cm-*"), "ControlPath"),
        ("/run/user/1000/agent.sock", "IdentityAgent"),
        ("/run/my.sock", "IdentityAgent"),
        (s.h("Library/Group Containers/agent.sock"), "IdentityAgent"),
    ]
    assert all(p.secret for p in paths)
    assert notes == ()


def test_agent_variables_unset(s: Setup) -> None:
    main = s.config("IdentityAgent SSH_AUTH_SOCK\nIdentityAgent $MY_SOCK\n")
    paths, notes = s.run()
    assert paths == ()
    assert len(notes) == 1  # an unset SSH_AUTH_SOCK is ordinary; a named variable that is unset is noted
    assert notes[0].startswith(f"{main}:2:")
    assert "MY_SOCK" in notes[0]


def test_system_config_includes_relative_to_its_own_directory(s: Setup) -> None:
    s.write(s.system, "Include ssh_config.d/*.conf\nIdentityFile /opt/sys_key\n")
    s.write(s.etc / "ssh_config.d" / "10-a.conf", "IdentityFile /opt/a\n")
    s.write(s.etc / "ssh_config.d" / "ignored.txt", "IdentityFile /opt/ignored\n")
    s.config("Include extra\n")
    s.write(s.ssh / "extra", "IdentityFile ~/.ssh/user_extra\n")
    s.write(s.etc / "extra", "IdentityFile /opt/wrong\n")
    assert s.paths() == [s.h(".ssh/user_extra"), "/opt/a", "/opt/sys_key"]


def test_user_and_system_config_may_include_the_same_file(s: Setup) -> None:
    shared = s.write(s.home / "shared", "Include sub\n")
    s.write(s.ssh / "sub", "IdentityFile /opt/user_sub\n")
    s.write(s.etc / "sub", "IdentityFile /opt/sys_sub\n")
    s.config(f"Include {shared}\n")
    s.write(s.system, f"Include {shared}\n")
    assert s.paths() == ["/opt/user_sub", "/opt/sys_sub"]


def test_cache_is_reused_until_something_read_changes(s: Setup) -> None:
    first = s.run()
    assert first == ((), ())
    assert s.run() is first
    config = s.config("IdentityFile ~/.ssh/a\nInclude conf.d/*\nIdentityAgent SSH_AUTH_SOCK\n")
    second = s.run()
    assert [p.path for p in second[0]] == [s.h(".ssh/a")]
    assert s.run() is second
    assert s.run({"UNRELATED": "1"}) is second

    config.write_text("IdentityFile ~/.ssh/bb\nInclude conf.d/*\nIdentityAgent SSH_AUTH_SOCK\n")
    third = s.run()
    assert [p.path for p in third[0]] == [s.h(".ssh/bb")]

    s.write(s.ssh / "conf.d" / "new", "IdentityFile ~/.ssh/new\n")
    fourth = s.run()
    assert [p.path for p in fourth[0]] == [s.h(".ssh/bb"), s.h(".ssh/new")]
    assert s.run() is fourth

    fifth = s.run({"SSH_AUTH_SOCK": "/run/agent"})
    assert [p.path for p in fifth[0]][-1] == "/run/agent"


def test_cache_notices_an_edit_of_the_same_size(s: Setup) -> None:
    config = s.config("IdentityFile ~/.ssh/a\n")
    assert s.paths() == [s.h(".ssh/a")]
    config.write_text("IdentityFile ~/.ssh/b\n")
    st = config.stat()
    os.utime(config, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))  # coarse clocks: force a tick
    assert s.paths() == [s.h(".ssh/b")]
