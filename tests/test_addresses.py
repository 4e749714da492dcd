"""Which addresses an agent advertises (client.network_interface, advertise.http, a wildcard bind)
and host networks: the config file, the resolution against this machine's real interfaces,
and the scheduler giving each port the address of the host network it asks for."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys

import pytest

from yurt.agent.addresses import default_route_interface, interfaces
from yurt.agent.config import AgentConfig, load_file
from yurt.errors import ConfigError
from yurt.structs import NodeNetworkAddress, NodeNetworkResource, Port

from .memory_state import MemoryState
from .test_scheduler_helpers import make_job, make_node, placed, ports, run


def _cfg(tmp_path, text: str) -> AgentConfig:
    path = tmp_path / "agent.hcl"
    path.write_text(text)
    cfg = load_file(str(path), AgentConfig(data_dir=tmp_path))
    cfg.check()
    cfg.resolve()
    return cfg


@pytest.fixture
def netns_host():
    """A network namespace with one interface (veth "lab0", 10.201.0.2/24, default route via .1)
    and a second address on another interface, standing in for a host."""
    name = "yurt-test-addr"
    subprocess.run(["ip", "netns", "del", name], capture_output=True)
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (["link", "set", "lo", "up"], ["link", "add", "lab0", "type", "veth", "peer", "name", "lab0p"],
                    ["addr", "add", "10.201.0.2/24", "dev", "lab0"], ["link", "set", "lab0", "up"], ["link", "set", "lab0p", "up"],
                    ["route", "add", "default", "via", "10.201.0.1"],
                    ["link", "add", "pub0", "type", "veth", "peer", "name", "pub0p"], ["addr", "add", "198.51.100.7/24", "dev", "pub0"],
                    ["link", "set", "pub0", "up"], ["link", "set", "pub0p", "up"]):
            subprocess.run(["ip", "-n", name, *cmd], check=True)
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _resolve_in(netns: str, text: str, tmp_path) -> str:
    """Resolve an agent config inside the namespace (a child process: setns is per process)."""
    (tmp_path / "agent.hcl").write_text(text)
    code = ("import sys, json\nfrom yurt.agent.config import AgentConfig, load_file\nfrom yurt.errors import ConfigError\n"
            f"c = load_file({str(tmp_path / 'agent.hcl')!r}, AgentConfig(data_dir={str(tmp_path)!r}))\n"
            "try:\n    c.check(); c.resolve()\nexcept ConfigError as e:\n    print('ERROR', e); sys.exit(0)\n"
            "print(json.dumps([c.node_ip, c.address, c.host_network_ips]))\n")
    proc = subprocess.run(["nsenter", f"--net=/var/run/netns/{netns}", "--", sys.executable, "-c", code],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_wildcard_bind_advertises_the_default_route_interface(netns_host, tmp_path):
    got = _resolve_in(netns_host, 'bind_addr = "0.0.0.0"\nclient { enabled = true\n servers = ["10.201.0.1:4646"] }\n',
                      tmp_path)
    assert got == '["10.201.0.2", "http://10.201.0.2:4646", {}]'


def test_network_interface_and_advertise(netns_host, tmp_path):
    got = _resolve_in(netns_host, 'bind_addr = "0.0.0.0"\nadvertise { http = "203.0.113.9:8080" }\n'
                                  'client { enabled = true\n servers = ["10.201.0.1:4646"]\n network_interface = "pub0" }\n',
                      tmp_path)
    assert got == '["198.51.100.7", "http://203.0.113.9:8080", {}]'


def test_host_networks_by_cidr_and_interface(netns_host, tmp_path):
    got = _resolve_in(netns_host, 'bind_addr = "10.201.0.2"\nclient {\n enabled = true\n servers = ["10.201.0.1:4646"]\n'
                                  ' host_network "public" { cidr = "198.51.100.0/24" }\n'
                                  ' host_network "lab" { interface = "lab0"\n reserved_ports = "22" }\n}\n', tmp_path)
    assert got == '["10.201.0.2", "http://10.201.0.2:4646", {"public": "198.51.100.7", "lab": "10.201.0.2"}]'


def test_bad_addresses_are_named(netns_host, tmp_path):
    got = _resolve_in(netns_host, 'client { enabled = true\n servers = ["x:1"]\n network_interface = "wlan9" }\n', tmp_path)
    assert got.startswith('ERROR client.network_interface = "wlan9": no such network interface here')
    assert "lab0" in got and "pub0" in got
    got = _resolve_in(netns_host, 'client {\n enabled = true\n servers = ["x:1"]\n'
                                  ' host_network "public" { cidr = "192.0.2.0/24" }\n}\n', tmp_path)
    assert got == 'ERROR client.host_network "public": any interface has no address in 192.0.2.0/24: fix the cidr or the interface'


def test_wildcard_bind_without_default_route_is_refused(tmp_path):
    name = "yurt-test-noroute"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        got = _resolve_in(name, 'bind_addr = "0.0.0.0"\nserver { enabled = true }\n', tmp_path)
    finally:
        subprocess.run(["ip", "netns", "del", name], capture_output=True)
    assert got.startswith('ERROR bind_addr is "0.0.0.0" and this host has no default route')
    assert "network_interface" in got


def test_dev_agent_may_advertise_loopback(tmp_path):
    cfg = AgentConfig(dev=True, data_dir=tmp_path)
    cfg.resolve()
    assert cfg.node_ip == "127.0.0.1" and cfg.address == "http://127.0.0.1:4646"


def test_this_machines_interfaces_are_read():
    table = interfaces()
    assert ipaddress.IPv4Address("127.0.0.1") in [a.ip for a in table["lo"]]
    iface = default_route_interface()
    assert iface == "" or iface in table


def test_config_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=re.escape('client.host_network "x": unknown setting "mode"')):
        _cfg(tmp_path, 'client {\n enabled = true\n servers = ["a:1"]\n host_network "x" { mode = "y" }\n}\n')
    with pytest.raises(ConfigError, match=re.escape('advertise.http = "10.0.0.1:http": "http" is not a TCP port')):
        _cfg(tmp_path, 'advertise { http = "10.0.0.1:http" }\nserver { enabled = true }\n')
    cfg = load_file(str(_write(tmp_path, 'advertise {\n http = "10.0.0.1"\n rpc = "10.0.0.1"\n}\n')),
                    AgentConfig(data_dir=tmp_path))
    assert cfg.warnings == [f"{tmp_path / 'agent.hcl'}: advertise {{ rpc }} is ignored: Yurt agents talk over "
                            "HTTP only (advertise { http })"]


def _write(tmp_path, text: str):
    path = tmp_path / "agent.hcl"
    path.write_text(text)
    return path


def _with_host_network(i: int, name: str, address: str):
    node = make_node(i)
    node.node_resources.node_networks = [NodeNetworkResource(addresses=[
        NodeNetworkAddress(alias="default", address=f"10.0.0.{i}"), NodeNetworkAddress(alias=name, address=address)])]
    return node


def test_ports_get_the_address_of_their_host_network():
    nets = ports(("ssh", 2222), dynamic=[("http", 8080)])
    nets[0].dynamic_ports.append(Port(label="admin", to=0, host_network="public"))
    job = make_job(networks=nets)
    plain, public = make_node(1), _with_host_network(2, "public", "198.51.100.2")
    st = MemoryState(nodes=[plain, public], jobs=[job])
    res = run(st, job)
    [alloc] = placed(res)
    assert alloc.node_id == public.id   # the other node has no host network "public"
    by_label = {p.label: p.host_ip for p in alloc.allocated_resources.shared.ports}
    assert by_label == {"ssh": "10.0.0.2", "http": "10.0.0.2", "admin": "198.51.100.2"}


def test_missing_host_network_is_a_placement_failure():
    nets = ports(dynamic=[("http", 8080)])
    nets[0].dynamic_ports[0].host_network = "public"
    job = make_job(networks=nets)
    st = MemoryState(nodes=[make_node(1)], jobs=[job])
    res = run(st, job)
    assert not placed(res)
    assert res.failed_tg_allocs["g"].reasons() == [
        "Resources exhausted on 1 node", 'Dimension "missing host network "public" for port "http"" exhausted on 1 node']


def test_host_network_reserved_ports_are_not_handed_out():
    job = make_job(networks=ports(("ssh", 22)))
    node = _with_host_network(1, "public", "198.51.100.2")
    node.node_resources.node_networks[0].addresses[1].reserved_ports = "22"
    st = MemoryState(nodes=[node], jobs=[job])
    res = run(st, job)
    assert not placed(res)
    assert "network: reserved port collision ssh=22" in " ".join(res.failed_tg_allocs["g"].reasons())


# -- go-sockaddr templates in the addresses ------------------------------------------------------

def test_sockaddr_templates_in_the_agent_config(netns_host, tmp_path):
    """Nomad's and Consul's go-sockaddr templates, executed against the namespace's interfaces:
    lab0 (10.201.0.2/24, the default route's), pub0 (198.51.100.7/24: RFC 6890, not forwardable)."""
    got = _resolve_in(netns_host, 'bind_addr = "{{ GetPrivateIP }}"\n'
                                  'advertise { http = "{{ GetInterfaceIP \\"lab0\\" }}:8080" }\n'
                                  'client {\n enabled = true\n servers = ["10.201.0.1:4646"]\n'
                                  ' network_interface = "{{ GetDefaultInterfaces | attr \\"name\\" }}" }\n', tmp_path)
    assert got == '["10.201.0.2", "http://10.201.0.2:8080", {}]'
    got = _resolve_in(netns_host, 'bind_addr = "0.0.0.0"\nclient {\n enabled = true\n servers = ["x:1"]\n'
                                  ' network_interface = "{{ GetAllInterfaces | include \\"network\\" '
                                  '\\"198.51.100.0/24\\" | attr \\"name\\" }}" }\n', tmp_path)
    assert got == '["198.51.100.7", "http://198.51.100.7:4646", {}]'


def test_get_public_ip_skips_private_and_unforwardable_addresses(netns_host, tmp_path):
    # an address outside RFC 6890 on pub0 (an isolated namespace: nothing is sent anywhere)
    subprocess.run(["ip", "-n", netns_host, "addr", "add", "11.0.0.7/24", "dev", "pub0"], check=True)
    got = _resolve_in(netns_host, 'bind_addr = "0.0.0.0"\nadvertise { http = "{{ GetPublicIP }}" }\n'
                                  'client { enabled = true\n servers = ["x:1"] }\n', tmp_path)
    assert got == '["10.201.0.2", "http://11.0.0.7:4646", {}]'


def test_sockaddr_templates_that_fail_are_named(netns_host, tmp_path):
    got = _resolve_in(netns_host, 'bind_addr = "{{ GetInterfaceIP \\"wlan9\\" }}"\n', tmp_path)
    assert got.startswith('ERROR bind_addr = "{{ GetInterfaceIP "wlan9" }}" gives no address on this host '
                          "(its addresses: "), got
    assert "lab0 10.201.0.2/24" in got and "pub0 198.51.100.7/24" in got and "write the address" in got
    got = _resolve_in(netns_host, 'bind_addr = "{{ GetAllInterfaces | math \\"address\\" \\"+5\\" }}"\n', tmp_path)
    assert got.startswith("ERROR bind_addr = ") and "go-sockaddr's math is not supported" in got, got
    got = _resolve_in(netns_host, 'bind_addr = "{{ GetPrivateIP "\n', tmp_path)
    assert got == 'ERROR bind_addr = "{{ GetPrivateIP ": template: bind_addr:1:16: unclosed action', got
    got = _resolve_in(netns_host, 'bind_addr = "{{ GetAllInterfaces | sort \\"speed\\" | attr \\"address\\" }}"\n',
                      tmp_path)
    assert 'unknown sort key "speed"' in got and "address, default, name, private, size, type" in got, got


def test_sockaddr_functions_on_a_table():
    """The list functions on a table of addresses given directly (go-sockaddr's semantics)."""
    from yurt.gotemplate import TemplateError
    from yurt.gotemplate.sockaddr import IfAddr, execute_sockaddr
    up = frozenset({"up", "broadcast", "multicast"})
    table = [IfAddr("lo", ipaddress.ip_interface("127.0.0.1/8"), frozenset({"up", "loopback"})),
             IfAddr("eth0", ipaddress.ip_interface("10.1.2.3/16"), up, default=True),
             IfAddr("eth0", ipaddress.ip_interface("fd00::5/64"), up, default=True),
             IfAddr("eth1", ipaddress.ip_interface("192.168.9.9/24"), up),
             IfAddr("eth1", ipaddress.ip_interface("11.0.0.7/24"), up),
             IfAddr("eth2", ipaddress.ip_interface("10.9.0.1/24"), frozenset({"broadcast"}))]   # down

    def ev(text: str) -> str:
        return execute_sockaddr(text, "x", table)
    assert ev("{{ GetPrivateIP }}") == "10.1.2.3"          # the default interface, IPv4 first
    assert ev("{{ GetPublicIP }}") == "11.0.0.7"
    assert ev("{{ GetPrivateIPs }}") == "10.1.2.3 192.168.9.9 10.9.0.1 fd00::5"   # type, then the larger network
    assert ev('{{ GetInterfaceIPs "eth1" }}') == "192.168.9.9 11.0.0.7"
    assert ev('{{ GetAllInterfaces | include "flag" "up" | include "rfc" "1918" | join "address" "," }}') == \
        "10.1.2.3,192.168.9.9"
    assert ev('{{ GetAllInterfaces | exclude "flags" "loopback" | include "type" "ipv4" | sort "-address" | '
              'limit 2 | join "name" " " }}') == "eth1 eth1"
    assert ev('{{ GetAllInterfaces | include "type" "ipv4" | offset -1 | attr "address" }}') == "10.9.0.1"
    assert ev('{{ GetAllInterfaces | include "name" "^eth" | unique "name" | join "name" " " }}') == "eth0 eth1 eth2"
    assert ev('{{ GetAllInterfaces | include "address" "^10\\\\.1\\\\." | attr "network" }}') == "10.1.0.0"
    assert ev('{{ GetDefaultInterfaces | attr "netmask" }}') == "255.255.0.0"
    assert ev('{{ GetDefaultInterfaces | attr "mask_bits" }}/{{ GetDefaultInterfaces | attr "type" }}') == "16/IPv4"
    assert ev('{{ GetAllInterfaces | include "flag" "down" | attr "name" }}') == "eth2"
    with pytest.raises(TemplateError, match='error calling attr: unknown attribute "speed"'):
        ev('{{ GetPrivateInterfaces | attr "speed" }}')
    with pytest.raises(TemplateError, match='error calling include: unknown flag "fast"'):
        ev('{{ GetAllInterfaces | include "flag" "fast" }}')


def test_agent_that_cannot_listen_says_why(tmp_path):
    """`yurt agent` exits 1 with the reason and the flag to change, not uvicorn's silent 3."""
    import socket
    from .conftest import run_yurt
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        r = run_yurt("agent", "-dev", "-http-port", str(port), "-data-dir", str(tmp_path / "a"), timeout=120)
    finally:
        busy.close()
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert f"cannot listen on 127.0.0.1:{port}: address already in use; pick another with -http-port" in r.stderr, \
        r.stderr
    r = run_yurt("agent", "-dev", "-bind", "192.0.2.250", "-data-dir", str(tmp_path / "b"), timeout=120)
    assert r.returncode == 1 and "cannot listen on 192.0.2.250:4646: cannot assign requested address" in r.stderr, \
        (r.returncode, r.stderr)
