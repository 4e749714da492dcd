# A terminating gateway: mesh services reach "legacy", a server outside the mesh registered in
# the catalog, through the gateway, which holds legacy's identity (intentions apply to it).
#   curl -X PUT $YURT_ADDR/v1/catalog/register \
#     -d '{"Node": "legacy-host", "Address": "10.0.0.7", "Service": {"Service": "legacy", "Port": 8000}}'
#   yurt job run examples/gateways/terminating.nomad
# The "client" group reaches legacy at 127.0.0.1:19090 (its sidecar's upstream).
job "terminating-demo" {
  datacenters = ["dc1"]

  group "gateway" {
    network {
      mode = "bridge"
    }

    service {
      name = "legacy-gw"

      connect {
        gateway {
          terminating {
            service {
              name = "legacy"
            }
          }
        }
      }
    }
  }

  group "client" {
    network {
      mode = "bridge"
    }

    service {
      name = "legacy-client"
      port = "9999"

      connect {
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "legacy"
              local_bind_port  = 19090
            }
          }
        }
      }
    }

    task "idle" {
      driver = "exec"
      config {
        command = "/bin/sleep"
        args    = ["3600"]
      }
    }
  }
}
