# An ingress gateway in front of count-api (examples/countdash): outside traffic on the host's
# port 8080 enters the mesh over mTLS as the identity "ingress-gw", so intentions apply.
#   yurt job run examples/gateways/ingress.nomad
#   curl http://127.0.0.1:8080/
job "ingress-demo" {
  datacenters = ["dc1"]

  group "api" {
    network {
      mode = "bridge"
    }

    service {
      name = "count-api"
      port = "9001"

      connect {
        sidecar_service {}
      }
    }

    task "web" {
      driver = "exec"
      config {
        command = "/usr/bin/python3"
        args    = ["-c", file("../countdash/counter_api.py")]
      }
    }
  }

  group "ingress-group" {
    network {
      mode = "bridge"
      port "inbound" {
        static = 8080
        to     = 8080
      }
    }

    service {
      name = "ingress-gw"
      port = "8080"

      connect {
        gateway {
          ingress {
            listener {
              port     = 8080
              protocol = "tcp"
              service {
                name = "count-api"
              }
            }
          }
        }
      }
    }
  }
}
