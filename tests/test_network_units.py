"""The network pieces that need no root: mappings, env, CNI config, plugin protocol, rule parsing."""

from __future__ import annotations

import json
import uuid

import pytest

from yurt.client.network import bridge, cni, rules
from yurt.client.network.alloc_network import NetworkError, conflist_for, resolv_conf_text
from yurt.client.network.iptables import parse_save
from yurt.client.network.network_hook import alloc_env
from yurt.client.network.portmap import port_mappings

from .test_network_util import bridge_alloc, sh


def _alloc(ports):
    return bridge_alloc([sh("t", "true")], ports)


def test_port_mappings_follow_nomad():
    alloc = _alloc([("a", 9002, 9002, "10.0.0.5"), ("b", 80, 8080, "10.0.0.5"), ("c", 23456, 0, "10.0.0.5"),
                    ("d", 23457, -1, "10.0.0.5")])
    got = [(m["hostPort"], m["containerPort"], m["protocol"], m["hostIP"]) for m in port_mappings(alloc)]
    assert got == [(9002, 9002, "tcp", "10.0.0.5"), (9002, 9002, "udp", "10.0.0.5"),
                   (80, 8080, "tcp", "10.0.0.5"), (80, 8080, "udp", "10.0.0.5"),
                   (23456, 23456, "tcp", "10.0.0.5"), (23456, 23456, "udp", "10.0.0.5"),
                   (23457, 23457, "tcp", "10.0.0.5"), (23457, 23457, "udp", "10.0.0.5")]


def test_loopback_host_ports_are_also_mapped_on_the_gateway():
    alloc = _alloc([("http", 9002, 8080, "127.0.0.1")])
    got = [(m["hostIP"], m["protocol"]) for m in port_mappings(alloc, gateway="172.26.64.1")]
    assert got == [("127.0.0.1", "tcp"), ("127.0.0.1", "udp"), ("172.26.64.1", "tcp"), ("172.26.64.1", "udp")]
    assert "hostIP" not in port_mappings(_alloc([("x", 1234, 0, "")]))[0]


def test_alloc_env_keys_keep_dashes():
    alloc = _alloc([("connect-proxy-api", 21000, 0), ("http", 9002, 8080)])
    env = alloc_env(alloc, "172.26.64.7", "eth0")
    assert env == {
        "NOMAD_ALLOC_IP_connect-proxy-api": "172.26.64.7",
        "NOMAD_ALLOC_ADDR_connect-proxy-api": "172.26.64.7:21000",
        "NOMAD_ALLOC_INTERFACE_connect-proxy-api": "eth0",
        "NOMAD_ALLOC_IP_http": "172.26.64.7",
        "NOMAD_ALLOC_ADDR_http": "172.26.64.7:8080",
        "NOMAD_ALLOC_INTERFACE_http": "eth0",
    }
    assert alloc_env(alloc, "", "eth0") == {}


def test_alloc_env_survives_task_env_key_cleaning():
    from yurt.client.taskenv import clean_keys
    env = clean_keys(alloc_env(_alloc([("my-port", 1, 0)]), "10.1.1.1", "eth0"))
    assert "NOMAD_ALLOC_IP_my-port" in env


def test_bridge_conflist_is_nomads_adapted():
    conf = bridge.conflist()
    assert conf["cniVersion"] == "0.4.0" and conf["name"] == "yurt"
    assert [p["type"] for p in conf["plugins"]] == ["loopback", "bridge", "firewall", "portmap"]
    br = conf["plugins"][1]
    assert br == {"type": "bridge", "bridge": "yurt", "ipMasq": True, "isGateway": True, "forceAddress": True,
                  "hairpinMode": True,
                  "ipam": {"type": "host-local", "ranges": [[{"subnet": "172.26.64.0/20"}]],
                           "routes": [{"dst": "0.0.0.0/0"}], "dataDir": "/var/run/cni"}}
    assert conf["plugins"][2] == {"type": "firewall", "backend": "iptables", "iptablesAdminChainName": "YURT-ADMIN"}
    assert conf["plugins"][3] == {"type": "portmap", "capabilities": {"portMappings": True}, "snat": True}
    assert bridge.gateway() == "172.26.64.1"


def test_cni_args_skip_values_with_semicolons():
    rt = cni.Runtime("id", "/x", args={"IgnoreUnknown": "true", "A": "1", "B": "x;y", "C": "3"})
    assert rt.cni_args() == "IgnoreUnknown=true;A=1;C=3"


def test_plugin_config_chains_name_version_prev_result_and_capabilities():
    conf = {"name": "n", "cniVersion": "0.4.0", "plugins": []}
    rt = cni.Runtime("id", "/x", capabilities={"portMappings": [{"hostPort": 1}], "bandwidth": {}})
    plugin = {"type": "portmap", "capabilities": {"portMappings": True}}
    out = cni._plugin_config(conf, plugin, rt, {"ips": []})
    assert out == {"type": "portmap", "capabilities": {"portMappings": True}, "name": "n", "cniVersion": "0.4.0",
                   "prevResult": {"ips": []}, "runtimeConfig": {"portMappings": [{"hostPort": 1}]}}
    assert "runtimeConfig" not in cni._plugin_config(conf, {"type": "bridge"}, rt, None)


def test_a_plugin_error_shows_msg_and_details(tmp_path):
    plugin = tmp_path / "fails"
    plugin.write_text('#!/bin/sh\ncat >/dev/null\necho \'{"code":11,"msg":"no luck","details":"try later"}\'\n'
                      'exit 1\n')
    plugin.chmod(0o755)
    rt = cni.Runtime("id", "/nonexistent", paths=(str(tmp_path),))
    with pytest.raises(cni.CNIError) as e:
        cni.exec_plugin("ADD", {"name": "n", "cniVersion": "0.4.0"}, {"type": "fails"}, rt, None)
    assert str(e.value) == 'CNI plugin "fails" failed (ADD): no luck: try later'
    assert e.value.code == 11 and e.value.plugin == "fails"


def test_a_plugin_that_is_not_there_says_how_to_install_it(tmp_path):
    with pytest.raises(cni.CNIError) as e:
        cni.find_plugin("portmap", ("/opt/cni/bin", "/usr/libexec/cni", str(tmp_path)))
    assert str(e.value) == (f'CNI plugin "portmap" not found in /opt/cni/bin:/usr/libexec/cni:{tmp_path}: '
                            "install containernetworking-plugins (apt-get install containernetworking-plugins)")


def test_load_network_by_file_name_or_by_name(tmp_path):
    (tmp_path / "a.conflist").write_text(json.dumps({"cniVersion": "0.4.0", "name": "alpha",
                                                     "plugins": [{"type": "bridge"}]}))
    (tmp_path / "10-b.conf").write_text(json.dumps({"cniVersion": "0.3.1", "name": "beta", "type": "ptp"}))
    (tmp_path / "junk.json").write_text("{not json")
    assert cni.load_network("a", [str(tmp_path)])["name"] == "alpha"
    assert cni.load_network("alpha", [str(tmp_path)])["plugins"] == [{"type": "bridge"}]
    beta = cni.load_network("beta", ["/nonexistent", str(tmp_path)])
    assert beta == {"cniVersion": "0.3.1", "name": "beta", "plugins": [{"type": "ptp"}]}
    with pytest.raises(cni.CNIError) as e:
        cni.load_network("nope", ["/nonexistent", str(tmp_path)])
    assert str(e.value) == (f'CNI network "nope" not found: no nope.conflist (or .conf/.json with "name": "nope") '
                            f"in /nonexistent, {tmp_path}")


def test_unknown_mode_is_refused():
    with pytest.raises(NetworkError, match=r'network mode "tap" is not supported: use one of host, bridge, none'):
        conflist_for("tap", ())
    with pytest.raises(NetworkError):
        conflist_for("cni/", ())


def test_result_address_is_the_sandbox_interface():
    result = {"interfaces": [{"name": "yurt"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/var/run/netns/x"}],
              "ips": [{"version": "6", "address": "fd00::2/64", "interface": 2},
                      {"version": "4", "address": "172.26.64.9/20", "interface": 2, "gateway": "172.26.64.1"}]}
    assert cni.result_address(result) == "172.26.64.9"
    assert cni.result_address(None) == ""


def test_resolv_conf_from_dns_block():
    text, custom = resolv_conf_text({"Servers": ["1.1.1.1"], "Searches": ["a", "b"], "Options": ["ndots:1"]})
    assert (text, custom) == ("nameserver 1.1.1.1\nsearch a b\noptions ndots:1\n", True)


SAVE = """# Generated by iptables-save
*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:CNI-HOSTPORT-DNAT - [0:0]
:CNI-DN-aaaa - [0:0]
:CNI-DN-bbbb - [0:0]
:CNI-1111 - [0:0]
:CUSTOM - [0:0]
-A POSTROUTING -s 172.26.64.2/32 -m comment --comment "name: \\"yurt\\" id: \\"{a}\\"" -j CNI-1111
-A CNI-1111 -d 172.26.64.0/20 -m comment --comment "name: \\"yurt\\" id: \\"{a}\\"" -j ACCEPT
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"yurt\\" id: \\"{a}\\"" -m multiport --dports 9002 -j CNI-DN-aaaa
-A CNI-HOSTPORT-DNAT -p tcp -m comment --comment "dnat name: \\"yurt\\" id: \\"{b}\\"" -m multiport --dports 9003 -j CNI-DN-bbbb
-A CNI-DN-aaaa -d 127.0.0.1/32 -p tcp -m tcp --dport 9002 -j DNAT --to-destination 172.26.64.2:8080
-A CUSTOM -s 10.0.0.0/8 -m comment --comment "mine" -j ACCEPT
COMMIT
*filter
:CNI-FORWARD - [0:0]
-A CNI-FORWARD -d 172.26.64.2/32 -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A CNI-FORWARD -s 172.26.64.3/32 -j ACCEPT
COMMIT
"""


def test_rules_of_an_allocation_are_found_by_comment_and_address():
    a, b = str(uuid.uuid4()), str(uuid.uuid4())
    rs = parse_save(SAVE.replace("{a}", a).replace("{b}", b))
    assert "CNI-DN-aaaa" in rs.chains["nat"] and len(rs.rules) == 8
    found = rules.alloc_rules(rs, {a}, {"172.26.64.2"})
    assert [(r.table, r.chain, r.target) for r in found] == [
        ("nat", "POSTROUTING", "CNI-1111"), ("nat", "CNI-1111", "ACCEPT"), ("nat", "CNI-HOSTPORT-DNAT", "CNI-DN-aaaa"),
        ("filter", "CNI-FORWARD", "ACCEPT")]
    assert found[0].comment == f'name: "yurt" id: "{a}"'
    assert rules.comment_ids(found[2]) == {a}
