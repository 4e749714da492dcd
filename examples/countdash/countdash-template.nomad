# countdash with the dashboard's COUNTING_SERVICE_URL from a template (env = true) instead of an
# env block: the template lists count-api's healthy instances from the catalog (the dashboard
# restarts when they change: count-api moved) and sets the mesh upstream's address.
# Run it as countdash.nomad (a -dev-connect agent, as root): yurt job run countdash-template.nomad
job "countdash" {
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
        args    = ["-c", file("counter_api.py")]
      }
    }
  }

  group "dashboard" {
    network {
      mode = "bridge"
      port "http" {
        static = 9002
        to     = 9002
      }
    }

    service {
      name = "count-dashboard"
      port = "9002"

      connect {
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "count-api"
              local_bind_port = 8080
            }
          }
        }
      }
    }

    task "dashboard" {
      driver = "exec"
      template {
        # rendered before the task starts, and again when count-api's instances change (the task
        # restarts with the new file): count-api's healthy instances, then the upstream's address
        data        = <<EOT
{{- range service "count-api" }}
# count-api instance {{ .ID }} at {{ .Address }}:{{ .Port }}
{{- end }}
COUNTING_SERVICE_URL=http://{{ env "NOMAD_UPSTREAM_ADDR_count_api" }}
EOT
        destination = "local/counting.env"
        env         = true
        change_mode = "restart"
      }
      config {
        command = "/usr/bin/python3"
        args    = ["-c", file("dashboard.py")]
      }
    }
  }
}
