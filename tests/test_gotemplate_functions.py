"""consul-template's file, writeToFile, scratch, YAML/TOML and connect functions in
`yurt.gotemplate` (with real files), and the agent's `client { template { } }` block."""

from __future__ import annotations

import os
import pwd

import pytest

from yurt.agent.config import AgentConfig, load_file
from yurt.client.template_settings import TemplateRetry, TemplateSettings
from yurt.errors import ConfigError
from yurt.gotemplate import (CARoot, CatalogNode, CatalogNodeInfo, CatalogNodeService, Dependency, HealthService, LeafCert,
                             MemorySource, TemplateError, render)


def test_file_reads_relative_to_the_task_dir_and_is_a_dependency(tmp_path):
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "a.txt").write_text("hello")
    out = render('[{{ file "local/a.txt" }}]', MemorySource(), task_dir=str(tmp_path), file_sandbox=True)
    assert out.text == "[hello]"
    assert out.deps == {Dependency("file", str(tmp_path / "local" / "a.txt"))}
    assert not out.missing


def test_a_file_not_there_yet_is_missing(tmp_path):
    out = render('{{ file "local/later.txt" }}', MemorySource(), task_dir=str(tmp_path), file_sandbox=True)
    assert out.missing == {Dependency("file", str(tmp_path / "local" / "later.txt"))}


def test_the_sandbox_refuses_files_outside_the_task_dir(tmp_path):
    for path in ("/etc/passwd", "../other/x", "local/../../x"):
        with pytest.raises(TemplateError) as e:
            render(f'{{{{ file "{path}" }}}}', MemorySource(), task_dir=str(tmp_path), file_sandbox=True)
        assert f"file: '{path}' is outside of sandbox" in str(e.value)
        assert "client { template { disable_file_sandbox = true } }" in str(e.value)
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "link").symlink_to("/etc/hostname")
    with pytest.raises(TemplateError, match="outside of sandbox"):
        render('{{ file "local/link" }}', MemorySource(), task_dir=str(tmp_path), file_sandbox=True)


def test_without_the_sandbox_any_file_is_read(tmp_path):
    other = tmp_path.parent / f"{tmp_path.name}-outside.txt"
    other.write_text("out there")
    try:
        assert render(f'{{{{ file "{other}" }}}}', MemorySource(), task_dir=str(tmp_path)).text == "out there"
    finally:
        other.unlink()


def test_write_to_file_writes_appends_and_sets_the_mode(tmp_path):
    src = MemorySource()
    text = '{{ "one" | writeToFile "local/w.txt" "" "" "0600" }}x'
    assert render(text, src, task_dir=str(tmp_path), file_sandbox=True).text == "x"
    render('{{ "two" | writeToFile "local/w.txt" "" "" "0640" "append,newline" }}', src, task_dir=str(tmp_path),
           file_sandbox=True)
    written = tmp_path / "local" / "w.txt"
    assert written.read_text() == "onetwo\n"
    assert written.stat().st_mode & 0o777 == 0o640
    with pytest.raises(TemplateError, match="writeToFile: '/tmp/x' is outside of sandbox"):
        render('{{ "x" | writeToFile "/tmp/x" "" "" "0644" }}', src, task_dir=str(tmp_path), file_sandbox=True)
    (tmp_path / "local" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(TemplateError, match='writeToFile: refusing to write to symlink "local/link"'):
        render('{{ "x" | writeToFile "local/link" "" "" "0644" }}', src, task_dir=str(tmp_path))
    assert not (tmp_path / "elsewhere").exists()
    render('{{ "o" | writeToFile "local/own" "nobody" "0" "0644" }}', src, task_dir=str(tmp_path))
    st = (tmp_path / "local" / "own").stat()
    if os.geteuid() == 0:
        assert (st.st_uid, st.st_gid) == (pwd.getpwnam("nobody").pw_uid, 0)
    with pytest.raises(TemplateError, match="writeToFile: local/z: unknown user 'no-such-user-x'"):
        render('{{ "x" | writeToFile "local/z" "no-such-user-x" "" "0644" }}', src, task_dir=str(tmp_path))
    with pytest.raises(TemplateError, match='perms "rw" is not an octal mode'):
        render('{{ "x" | writeToFile "local/y" "" "" "rw" }}', src, task_dir=str(tmp_path))


def test_a_denied_function_fails_naming_the_denylist(tmp_path):
    with pytest.raises(TemplateError) as e:
        render('{{ "x" | writeToFile "local/w" "" "" "0644" }}', MemorySource(), task_dir=str(tmp_path),
               denied=frozenset({"plugin", "writeToFile"}))
    assert "function 'writeToFile' is disabled: the agent's client { template { function_denylist } } lists it" \
        in str(e.value)
    assert not (tmp_path / "local" / "w").exists()
    with pytest.raises(TemplateError, match="function 'key' is disabled"):
        render('{{ key "a" }}', MemorySource(kv={"a": "1"}), denied=frozenset({"key"}))


def test_scratch():
    text = ('{{ scratch.Set "a" "1" }}{{ scratch.SetX "a" "2" }}{{ scratch.SetX "b" "3" }}'
            '{{ scratch.Get "a" }}{{ scratch.Get "b" }} {{ scratch.Key "a" }} {{ scratch.Key "c" }} '
            '{{ scratch.MapSet "m" "z" "last" }}{{ scratch.MapSet "m" "a" "first" }}{{ scratch.MapSetX "m" "a" "no" }}'
            '{{ range scratch.MapValues "m" }}{{ . }},{{ end }} {{ scratch.MapValues "none" }}')
    assert render(text, MemorySource()).text == "13 true false first,last, []"
    with pytest.raises(TemplateError, match=r"scratch\.MapSet: a is not a map"):
        render('{{ scratch.Set "a" "1" }}{{ scratch.MapSet "a" "k" "v" }}', MemorySource())


def test_yaml_and_toml():
    src = MemorySource()
    assert render('{{ parseYAML "b: [x, y]\\na: 1" | toYAML }}', src).text == "a: 1\nb:\n- x\n- y"
    assert render('{{ (parseYAML "a:\\n  b: c").a.b }}', src).text == "c"
    assert render('{{ parseJSON "{\\"s\\": \\"v\\", \\"t\\": {\\"k\\": true}}" | toTOML }}', src).text == \
        's = "v"\n\n[t]\nk = true'
    with pytest.raises(TemplateError, match="toYAML: expected a map"):
        render('{{ "x" | toYAML }}', src)
    assert render('{{ parseYAML "" | len }}', src).text == "0"
    with pytest.raises(TemplateError, match="parseYAML: "):
        render('{{ parseYAML "a: [" }}', src)


def test_connect_lists_the_mesh_instances_of_a_service():
    src = MemorySource(
        health=[HealthService("api", "10.0.0.1", 8080)],
        mesh=[HealthService("api", "10.0.0.1", 21000, ID="api-sidecar-proxy", Node="n1"),
              HealthService("api", "10.0.0.2", 21001, ID="api-2", Node="n2", Status="critical")])
    text = '{{ range connect "api" }}{{ .Address }}:{{ .Port }} {{ end }}|{{ range connect "api|any" }}{{ .Port }} {{ end }}'
    out = render(text, src)
    assert out.text == "10.0.0.1:21000 |21000 21001 "
    assert Dependency("connect", "api") in out.deps
    with pytest.raises(TemplateError, match=r'health\.connect: invalid filter: "nope"'):
        render('{{ connect "api|nope" }}', src)


def test_node_nodes_ca_roots_and_ca_leaf():
    src = MemorySource(
        catalog_nodes=[CatalogNode(CatalogNodeInfo("n1", "10.0.0.1", "id-1"),
                                   [CatalogNodeService("web-1", "web", "10.0.0.1", 80, ["b", "a"])]),
                       CatalogNode(CatalogNodeInfo("n0", "10.0.0.0", "id-0"))],
        roots=[CARoot("r1", "old", "OLD"), CARoot("r2", "new", "NEW", Active=True)],
        leaves={"web": LeafCert("web", "CERT", "KEY", ServiceURI="spiffe://x/svc/web")})
    text = ('{{ with node }}{{ .Node.Node }}:{{ range .Services }}{{ .Service }}{{ .Tags }}{{ end }}{{ end }} '
            '{{ (node "n0").Node.Address }} {{ with node "nope" }}x{{ else }}none{{ end }} {{ range nodes }}{{ .Node }},{{ end }} '
            '{{ range caRoots }}{{ if .Active }}{{ .RootCertPEM }}{{ end }}{{ end }} '
            '{{ with caLeaf "web" }}{{ .CertPEM }}/{{ .PrivateKeyPEM }}{{ end }}')
    out = render(text, src)
    assert out.text == "n1:web[a b] 10.0.0.0 none n0,n1, NEW CERT/KEY"
    assert {Dependency("node", ""), Dependency("node", "n0"), Dependency("nodes", ""), Dependency("ca_roots", ""),
            Dependency("ca_leaf", "web")} <= out.deps
    with pytest.raises(TemplateError, match="caLeaf: db: no leaf for db"):
        render('{{ caLeaf "db" }}', src)


# -- the agent's client { template { } } block --------------------------------------------------

def load(tmp_path, body: str) -> AgentConfig:
    f = tmp_path / "agent.hcl"
    f.write_text(f"client {{\n  enabled = true\n  template {{\n{body}\n  }}\n}}\n")
    return load_file(str(f), AgentConfig())


def test_the_template_block_defaults_are_nomads(tmp_path):
    cfg = load(tmp_path, "")
    assert cfg.template == TemplateSettings()
    assert cfg.template.function_denylist == ("plugin", "writeToFile")
    assert not cfg.template.disable_file_sandbox


def test_the_template_block_is_read(tmp_path):
    cfg = load(tmp_path, """
    function_denylist    = ["plugin"]
    disable_file_sandbox = true
    block_query_wait     = "2m"
    wait {
      min = "1s"
      max = "10s"
    }
    wait_bounds {
      max = "20s"
    }
    nomad_retry {
      attempts    = 3
      backoff     = "1s"
      max_backoff = "4s"
    }
    max_stale   = "10s"
    vault_retry {
      attempts = 1
    }""")
    t = cfg.template
    assert t.function_denylist == ("plugin",) and t.disable_file_sandbox and t.block_query_wait == 120
    assert (t.wait_min, t.wait_max, t.bounds_min, t.bounds_max) == (1, 10, None, 20)
    assert t.retry == TemplateRetry(3, 1, 4)
    assert [t.retry.delay(n) for n in (1, 2, 3, 4)] == [1, 2, 4, 4]
    assert any("template { max_stale } } is ignored" in w for w in cfg.warnings)
    assert any("template { vault_retry } } is ignored: Yurt has no Vault integration" in w for w in cfg.warnings)


@pytest.mark.parametrize("body,message", [
    ("bogus = 1", "client { template { bogus } } is not a setting Yurt reads; template takes block_query_wait"),
    ('function_denylist = "plugin"', "function_denylist } } must be a list of function names"),
    ('disable_file_sandbox = "yes"', "disable_file_sandbox } } must be true or false"),
    ('wait {\n min = "10s"\n max = "1s"\n }', "client { template { wait } }: min (10s) is greater than max (1s)"),
    ('wait {\n mean = "1s"\n }', "client { template { wait { mean } } } is not a setting; wait takes min and max"),
    ('nomad_retry {\n attempts = -1\n }', "nomad_retry { attempts } } } = -1 must be 0 (retry without end) or more"),
    ('nomad_retry {\n attempts = 1\n }\n consul_retry {\n attempts = 2\n }', "nomad_retry and consul_retry differ"),
])
def test_bad_template_settings_are_refused_naming_them(tmp_path, body, message):
    with pytest.raises(ConfigError) as e:
        load(tmp_path, body)
    assert message in str(e.value)
    assert str(tmp_path / "agent.hcl") in str(e.value)
