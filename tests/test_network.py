"""Group network namespaces through the real CNI plugins: real namespaces, veths, iptables.

Reachability from the host goes to 127.0.0.1:<host port>: the portmap plugin (snat on) DNATs
locally originated traffic and turns on route_localnet for the bridge. From another
allocation's namespace, 127.0.0.1 is that namespace's own loopback, so it dials the bridge
gateway 172.26.64.1:<host port> instead (Yurt maps loopback host ports there too).
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import subprocess
from pathlib import Path

import pytest

from yurt.client import AllocDirHook, AllocRunner
from yurt.client.network import netns
from yurt.client.network import state as netstate
from yurt.client.network.network_hook import NetworkHook
from yurt.structs.network import DNSConfig

from .test_client_util import DRIVERS, Recorder, event_types, logs, start_alloc, wait_for
from .test_network_util import network_lock  # noqa: F401 - a fixture
from .test_network_util import (bridge_alloc, bridge_veths, free_port, host_http_get, host_veth,
                                iptables_lines, leases, mentions, needs_netns, ns_http_get, other_allocs, py, server, sh)

pytestmark = [needs_netns, pytest.mark.usefixtures("network_lock")]
SUBNET = ipaddress.ip_network("172.26.64.0/20")


def _running(runner: AllocRunner) -> None:
    wait_for(lambda: runner.client_status == "running", timeout=30, what="allocation running")


def _address(runner: AllocRunner) -> str:
    return runner.resources.network_status["Address"]


def test_two_bridge_allocations_get_their_own_address_and_env(tmp_path):
    # python, not /bin/sh, prints the environment: dash drops variables whose names have dashes
    code = ("import os, subprocess, time\n"
            "for k, v in sorted(os.environ.items()):\n"
            "    if k.startswith('NOMAD_ALLOC_'): print(k + '=' + v)\n"
            "subprocess.run(['ip', '-4', '-o', 'addr', 'show', 'dev', 'eth0'])\n"
            "time.sleep(600)\n")
    a = bridge_alloc([py("t", code)], [("http", free_port(), 8080), ("my-port", free_port(), 0)])
    b = bridge_alloc([py("t", code)], [("http", free_port(), 8080)])
    ra, _ = start_alloc(a, tmp_path)
    rb, _ = start_alloc(b, tmp_path)
    try:
        _running(ra)
        _running(rb)
        ip_a, ip_b = _address(ra), _address(rb)
        assert ip_a != ip_b
        assert ipaddress.ip_address(ip_a) in SUBNET and ipaddress.ip_address(ip_b) in SUBNET
        assert ra.resources.netns == f"/var/run/netns/{a.id}"
        assert ra.resources.network_status["InterfaceName"] == "eth0"
        my_port = a.allocated_resources.shared.ports[1].value
        out = wait_for(lambda: "inet " in logs(ra, "t") and logs(ra, "t"), what="env dump")
        assert f"NOMAD_ALLOC_IP_http={ip_a}\n" in out
        assert f"NOMAD_ALLOC_ADDR_http={ip_a}:8080\n" in out
        assert "NOMAD_ALLOC_INTERFACE_http=eth0\n" in out
        assert f"NOMAD_ALLOC_IP_my-port={ip_a}\n" in out            # these keys keep their dashes
        assert f"NOMAD_ALLOC_ADDR_my-port={ip_a}:{my_port}\n" in out  # no "to": the host value
        assert f"inet {ip_a}/20" in out                               # the task runs in the namespace
        # operators can use ip netns
        show = subprocess.run(["ip", "netns", "exec", a.id, "ip", "-4", "-o", "addr"], capture_output=True,
                              text=True)
        assert ip_a in show.stdout
    finally:
        ra.destroy(30)
        rb.destroy(30)


def test_server_is_reachable_on_its_host_port_and_tasks_share_loopback(tmp_path):
    host_port, unmapped = free_port(), free_port()
    probe = ("for i in $(seq 100); do "
             "python3 -c 'import urllib.request; urllib.request.urlopen(\"http://127.0.0.1:8080/\", timeout=2)' "
             "2>/dev/null && echo reached-sibling && break; sleep 0.2; done; sleep 600")
    a = bridge_alloc([server("web", 8080), server("private", unmapped), sh("probe", probe)],
                     [("http", host_port, 8080)])
    b = bridge_alloc([sh("client", "sleep 600")], [])
    ra, _ = start_alloc(a, tmp_path)
    rb, _ = start_alloc(b, tmp_path)
    try:
        _running(ra)
        _running(rb)
        ip_a = _address(ra)
        listing = "<title>Directory listing for /</title>"  # what the python http.server answers
        # from the host, through the portmap DNAT of 127.0.0.1:<host port>
        body = wait_for(lambda: host_http_get(f"http://127.0.0.1:{host_port}/"), what="host port answers")
        assert listing in body, body
        # two tasks of one group see each other on 127.0.0.1
        wait_for(lambda: "reached-sibling" in logs(ra, "probe"), what="sibling task over loopback")
        # from another allocation's namespace: the gateway's host port, and the address itself
        gateway = "172.26.64.1"
        for url in (f"http://{gateway}:{host_port}/", f"http://{ip_a}:8080/"):
            body = ns_http_get(b.id, url)
            assert body is not None and listing in body, (url, body)
        # a port without a host mapping: the private server listens in the namespace...
        body = wait_for(lambda: ns_http_get(a.id, f"http://127.0.0.1:{unmapped}/"), what="private server up")
        assert listing in body, body
        # ...but no host port leads there: nothing listens on it on the host
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex(("127.0.0.1", unmapped)) == errno.ECONNREFUSED
    finally:
        ra.destroy(30)
        rb.destroy(30)


def test_destroy_leaves_no_namespace_veth_lease_or_rule(tmp_path):
    # a first allocation creates the bridge and the shared chains; compare around the second
    warm = bridge_alloc([sh("t", "sleep 600")], [("http", free_port(), 8080)])
    rw, _ = start_alloc(warm, tmp_path)
    _running(rw)
    rw.destroy(30)
    before_rules, before_veths = iptables_lines(), bridge_veths()

    alloc = bridge_alloc([server("web", 8080)], [("http", free_port(), 8080)])
    runner, _ = start_alloc(alloc, tmp_path)
    try:
        _running(runner)
        st = netstate.load(tmp_path, alloc.id)
        address, veth = st.address, host_veth(st.result)
        during = iptables_lines()
        assert mentions(during, alloc.id) and mentions(during, f"{address}/32")
        assert veth in bridge_veths() and address in leases()
        assert Path(st.netns).exists()
    finally:
        runner.destroy(30)

    after = iptables_lines()
    assert not netns.exists(alloc.id)
    assert veth not in bridge_veths() and not Path(f"/sys/class/net/{veth}").exists()
    assert address not in leases()
    assert mentions(after, alloc.id, f"{address}/32") == []
    left = {line for line in after - before_rules if not other_allocs(line, {alloc.id})}
    assert left == set(), f"rules left behind: {sorted(left)}"
    assert bridge_veths() <= before_veths
    assert netstate.load(tmp_path, alloc.id) is None
    assert not Path(f"/etc/netns/{alloc.id}").exists()


def test_the_end_of_the_allocation_tears_the_network_down(tmp_path):
    alloc = bridge_alloc([sh("once", "echo done")], [("http", free_port(), 8080)])
    alloc.job.type = "batch"
    runner, rec = start_alloc(alloc, tmp_path)
    assert runner.wait(30)
    assert rec.last[0] == "complete"
    assert not netns.exists(alloc.id)              # postrun tore it down; destroy is still safe
    assert netstate.load(tmp_path, alloc.id) is None
    runner.destroy(10)


def _failed_setup(runner: AllocRunner, rec: Recorder) -> str:
    assert runner.wait(60)
    status, description, states = rec.last
    assert status == "failed", (status, description)
    assert all(event_types(s)[-1] == "Setup Failure" for s in states.values())
    return description


def _nothing_left(alloc_id: str, data_dir) -> None:
    assert not netns.exists(alloc_id)
    assert netstate.load(data_dir, alloc_id) is None
    assert mentions(iptables_lines(), alloc_id) == []
    assert alloc_id not in leases().values()


def test_host_port_already_taken_fails_prerun_clearly_and_leaks_nothing(tmp_path):
    port = free_port()
    with socket.socket() as squatter:
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        squatter.bind(("0.0.0.0", port))
        squatter.listen()
        alloc = bridge_alloc([sh("t", "sleep 600")], [("http", port, 8080)])
        runner, rec = start_alloc(alloc, tmp_path)
        description = _failed_setup(runner, rec)
    assert description == (f"prerun hook 'network' failed: host port {port} is already in use on this node "
                           "(something else listens on it): choose another static port or stop that program")
    _nothing_left(alloc.id, tmp_path)
    runner.destroy(10)


def test_unknown_cni_network_fails_clearly_and_leaks_nothing(tmp_path):
    conf_dir = tmp_path / "cni-conf"
    conf_dir.mkdir()
    alloc = bridge_alloc([sh("t", "sleep 600")], [], mode="cni/nope")
    hooks = [AllocDirHook(), NetworkHook(cni_config_dirs=(str(conf_dir),))]
    runner, rec = start_alloc(alloc, tmp_path / "data", hooks=hooks)
    description = _failed_setup(runner, rec)
    assert 'CNI network "nope" not found: no nope.conflist' in description
    assert str(conf_dir) in description
    _nothing_left(alloc.id, tmp_path / "data")


FAILING_PLUGIN = """#!/bin/sh
# A CNI plugin that fails ADD with a CNI error, and succeeds on DEL and CHECK.
cat >/dev/null
if [ "$CNI_COMMAND" = "ADD" ]; then
  echo "$CNI_CONTAINERID" >> "$(dirname "$0")/add-calls"
  printf '{"cniVersion":"0.4.0","code":7,"msg":"cannot program the widget","details":"widget 3 is busy"}'
  exit 1
fi
if [ "$CNI_COMMAND" = "VERSION" ]; then echo '{"cniVersion":"0.4.0","supportedVersions":["0.4.0"]}'; fi
exit 0
"""


def _plugin_dir(tmp_path, *, without: tuple[str, ...] = ()) -> Path:
    plugins = tmp_path / "cni-bin"
    plugins.mkdir()
    for name in ("loopback", "bridge", "host-local", "firewall", "portmap"):
        real = next(Path(d) / name for d in ("/opt/cni/bin", "/usr/libexec/cni", "/usr/lib/cni")
                     if (Path(d) / name).exists())
        if name not in without:
            (plugins / name).symlink_to(real)
    script = plugins / "widget"
    script.write_text(FAILING_PLUGIN)
    script.chmod(0o755)
    return plugins


def test_a_plugin_failing_midway_is_rolled_back(tmp_path):
    plugins = _plugin_dir(tmp_path)
    ipam_dir = tmp_path / "ipam"
    conf_dir = tmp_path / "cni-conf"
    conf_dir.mkdir()
    (conf_dir / "widgets.conflist").write_text(f"""{{
      "cniVersion": "0.4.0", "name": "widgets",
      "plugins": [
        {{"type": "loopback"}},
        {{"type": "bridge", "bridge": "yurttest0", "ipMasq": true, "isGateway": true,
          "ipam": {{"type": "host-local", "ranges": [[{{"subnet": "172.26.120.0/24"}}]],
                   "dataDir": "{ipam_dir}"}}}},
        {{"type": "widget"}}
      ]}}""")
    alloc = bridge_alloc([sh("t", "sleep 600")], [], mode="cni/widgets")
    hooks = [AllocDirHook(), NetworkHook(cni_paths=(str(plugins),), cni_config_dirs=(str(conf_dir),))]
    runner, rec = start_alloc(alloc, tmp_path / "data", hooks=hooks)
    description = _failed_setup(runner, rec)
    assert description == ("prerun hook 'network' failed: CNI plugin \"widget\" failed (ADD): "
                           "cannot program the widget: widget 3 is busy")
    assert (plugins / "add-calls").read_text().split() == [alloc.id] * 3  # retried, then given up
    _nothing_left(alloc.id, tmp_path / "data")
    assert alloc.id not in leases("widgets", str(ipam_dir)).values()   # the bridge's ADD was undone
    assert bridge_veths("yurttest0") == set()
    assert mentions(iptables_lines(), "widgets") == []
    subprocess.run(["ip", "link", "delete", "yurttest0"], capture_output=True)


def test_a_missing_plugin_is_named_with_how_to_install_it(tmp_path):
    plugins = _plugin_dir(tmp_path, without=("portmap",))
    alloc = bridge_alloc([sh("t", "sleep 600")], [("http", free_port(), 8080)])
    hooks = [AllocDirHook(), NetworkHook(cni_paths=(str(plugins),))]
    runner, rec = start_alloc(alloc, tmp_path / "data", hooks=hooks)
    description = _failed_setup(runner, rec)
    assert description == (f'prerun hook \'network\' failed: CNI plugin "portmap" not found in {plugins}: '
                           "install containernetworking-plugins (apt-get install containernetworking-plugins)")
    _nothing_left(alloc.id, tmp_path / "data")


def test_default_cni_path_includes_debian_location():
    from yurt.client.network.cni import DEFAULT_CNI_PATHS
    assert DEFAULT_CNI_PATHS == ("/opt/cni/bin", "/usr/libexec/cni", "/usr/lib/cni")


def test_none_mode_has_only_loopback(tmp_path):
    alloc = bridge_alloc([sh("t", "ip -o link; sleep 600")], [], mode="none")
    runner, _ = start_alloc(alloc, tmp_path)
    try:
        _running(runner)
        out = wait_for(lambda: logs(runner, "t"), what="links")
        (link,) = out.splitlines()  # one link only: the loopback, up
        assert link.startswith("1: lo: <LOOPBACK,UP,LOWER_UP> "), out
        assert runner.resources.network_status == {"InterfaceName": "", "Address": ""}
        assert not any(k.startswith("NOMAD_ALLOC_IP_") for k in runner.resources.env)
    finally:
        runner.destroy(30)
    assert not netns.exists(alloc.id)


def test_dns_and_hostname(tmp_path):
    dns = DNSConfig(servers=["192.0.2.53", "192.0.2.54"], searches=["svc.example"], options=["ndots:2"])
    alloc = bridge_alloc([sh("t", "sleep 600")], [], dns=dns, hostname="web-${NOMAD_ALLOC_INDEX}")
    runner, _ = start_alloc(alloc, tmp_path)
    try:
        _running(runner)
        expected = "nameserver 192.0.2.53\nnameserver 192.0.2.54\nsearch svc.example\noptions ndots:2\n"
        assert runner.resources.resolv_conf == expected
        assert Path(f"/etc/netns/{alloc.id}/resolv.conf").read_text() == expected
        seen = subprocess.run(["ip", "netns", "exec", alloc.id, "cat", "/etc/resolv.conf"], capture_output=True,
                              text=True).stdout
        assert seen == expected
        assert runner.resources.hostname == "web-0"
        assert runner.resources.network_status["DNS"] == {
            "Servers": ["192.0.2.53", "192.0.2.54"], "Searches": ["svc.example"], "Options": ["ndots:2"]}
    finally:
        runner.destroy(30)
    assert not Path(f"/etc/netns/{alloc.id}").exists()


def test_prerun_again_after_a_restart_reuses_the_network(tmp_path):
    alloc = bridge_alloc([sh("t", "sleep 600")], [("http", free_port(), 8080)])
    first = AllocRunner(alloc, data_dir=tmp_path, drivers=DRIVERS)
    hook = NetworkHook()
    hook.prerun(first.context)
    try:
        address = _address(first)
        lease_count = list(leases().values()).count(alloc.id)
        rules = mentions(iptables_lines(), alloc.id)
        # a new agent process: a fresh runner for the same allocation runs prerun again
        second = AllocRunner(alloc, data_dir=tmp_path, drivers=DRIVERS)
        NetworkHook().prerun(second.context)
        assert _address(second) == address
        assert second.resources.netns == first.resources.netns
        assert second.resources.env == first.resources.env
        assert list(leases().values()).count(alloc.id) == lease_count == 1
        assert mentions(iptables_lines(), alloc.id) == rules                 # no second ADD
    finally:
        hook.destroy(first.context)
        hook.destroy(first.context)  # idempotent
    _nothing_left(alloc.id, tmp_path)


def test_restart_after_the_namespace_vanished_sets_it_up_again(tmp_path):
    alloc = bridge_alloc([sh("t", "sleep 600")], [("http", free_port(), 8080)])
    runner = AllocRunner(alloc, data_dir=tmp_path, drivers=DRIVERS)
    hook = NetworkHook()
    hook.prerun(runner.context)
    try:
        subprocess.run(["ip", "netns", "delete", alloc.id], check=True)   # e.g. a reboot
        hook.prerun(AllocRunner(alloc, data_dir=tmp_path, drivers=DRIVERS).context)
        assert netns.exists(alloc.id)
        assert list(leases().values()).count(alloc.id) == 1
    finally:
        hook.destroy(runner.context)
    _nothing_left(alloc.id, tmp_path)


def test_cni_args_reach_the_plugins(tmp_path):
    plugins = tmp_path / "cni-bin"
    plugins.mkdir()
    (plugins / "recorder").write_text(
        '#!/bin/sh\ncat > /dev/null\necho "$CNI_COMMAND $CNI_ARGS $CNI_IFNAME $CNI_NETNS" >> "$(dirname "$0")/calls"\n'
        'echo \'{"cniVersion":"0.4.0","interfaces":[{"name":"eth0","sandbox":"x"}],'
        '"ips":[{"version":"4","address":"10.9.8.7/24","interface":0}]}\'\n')
    (plugins / "recorder").chmod(0o755)
    conf_dir = tmp_path / "conf"
    conf_dir.mkdir()
    (conf_dir / "rec.conf").write_text('{"cniVersion": "0.4.0", "name": "recnet", "type": "recorder"}')
    alloc = bridge_alloc([sh("t", "sleep 600")], [], mode="cni/recnet", cni_args={"FOO": "bar", "BAD": "a;b"})
    runner = AllocRunner(alloc, data_dir=tmp_path / "data", drivers=DRIVERS)
    hook = NetworkHook(cni_paths=(str(plugins),), cni_config_dirs=(str(conf_dir),))
    hook.prerun(runner.context)
    hook.destroy(runner.context)
    calls = (plugins / "calls").read_text().splitlines()
    assert [c.split()[0] for c in calls] == ["ADD", "DEL"]
    assert calls[0].split()[1] == (f"IgnoreUnknown=true;FOO=bar;NOMAD_REGION=global;NOMAD_NAMESPACE=default;"
                                   f"NOMAD_JOB_ID=nettest;NOMAD_GROUP_NAME=web;NOMAD_ALLOC_ID={alloc.id}")
    assert calls[0].split()[2:] == ["eth0", f"/var/run/netns/{alloc.id}"]
    assert runner.resources.network_status["Address"] == "10.9.8.7"
    _nothing_left(alloc.id, tmp_path / "data")
