# Connect Native next to a sidecar-proxied service, both directions:
#   greeter (plain HTTP behind a sidecar) -> native-api   through greeter's sidecar upstream
#   native-api (yurt.connect, no sidecar) -> greeter      dialled by name, mTLS end to end
#
#   yurt job run -var python=/path/to/venv/bin/python examples/connect-native/connect-native.nomad
#
# `python` must import yurt (and httpx): the agent's own interpreter does.

variable "python" {
  description = "a Python 3 that can import yurt"
  default     = "python3"
}

job "connect-native" {
  datacenters = ["dc1"]

  group "greeter" {
    network {
      mode = "bridge"
    }

    service {
      name = "greeter"
      port = "9001"

      connect {
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "native-api"
              local_bind_port  = 8080
            }
          }
        }
      }
    }

    task "greeter" {
      driver = "raw_exec"
      config {
        command = var.python
        args    = ["-c", file("greeter.py")]
      }
    }
  }

  group "native" {
    network {
      mode = "bridge"
      port "https" {
        to = 9443
      }
    }

    service {
      name = "native-api"
      port = "https"
      task = "app"

      connect {
        native = true
      }
    }

    task "app" {
      # raw_exec: the task reaches the agent's socket by its host path (see README)
      driver = "raw_exec"
      config {
        command = var.python
        args    = ["-c", file("native_app.py")]
      }
    }
  }
}
