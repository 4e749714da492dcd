"""Invalid job files: each problem is reported at its exact FILE:LINE:COL, naming the rule."""

from __future__ import annotations

import pytest

from yurt.jobspec import JobspecError, load

FILE = "bad.nomad"

# (id, job file, "LINE:COL" of the problem, fragment of its message)
CASES = [
    # --- parse errors -------------------------------------------------------------------------
    ("unclosed-block", """\
job "x" {
  group "g" {
    task "t" {
      driver = "docker"
  }
}
""", "7:1", "not closed"),
    ("unknown-top-block", """\
jobs "x" {
}
""", "1:1", 'unknown block "jobs"'),
    ("top-level-attribute", """\
region = "eu"
job "x" {
  group "g" { task "t" { driver = "docker" } }
}
""", "1:1", "put it inside the job block"),
    ("no-job-block", """\
variable "v" {
  default = 1
}
""", "1:1", "no job block"),
    ("two-job-blocks", """\
job "a" {
  group "g" { task "t" { driver = "docker" } }
}
job "b" {
  group "g" { task "t" { driver = "docker" } }
}
""", "4:1", "only one job block"),
    ("unknown-group-block", """\
job "x" {
  group "g" {
    widget {}
    task "t" { driver = "docker" }
  }
}
""", "3:5", 'unknown block "widget"'),
    ("unknown-task-attribute", """\
job "x" {
  group "g" {
    task "t" {
      driver = "docker"
      bogus  = 1
    }
  }
}
""", "5:7", 'unknown attribute "bogus"'),
    ("count-wrong-type", """\
job "x" {
  group "g" {
    count = "many"
    task "t" { driver = "docker" }
  }
}
""", "3:5", 'must be a whole number, not "many"'),
    ("bad-duration", """\
job "x" {
  group "g" {
    task "t" {
      driver       = "docker"
      kill_timeout = "soon"
    }
  }
}
""", "5:7", 'must be a duration like "30s", not "soon"'),
    # --- job ----------------------------------------------------------------------------------
    ("job-id-space", """\
job "count dash" {
  group "g" { task "t" { driver = "docker" } }
}
""", "1:5", "contains a space"),
    ("job-type", """\
job "x" {
  type = "daemon"
  group "g" { task "t" { driver = "docker" } }
}
""", "2:3", 'job type "daemon" is not known'),
    ("priority", """\
job "x" {
  priority = 500
  group "g" { task "t" { driver = "docker" } }
}
""", "2:3", "use 1 to 100"),
    ("no-groups", """\
job "x" {
  datacenters = ["dc1"]
}
""", "1:1", "job has no groups"),
    ("duplicate-group", """\
job "x" {
  group "g" { task "t" { driver = "docker" } }
  group "g" { task "t" { driver = "docker" } }
}
""", "3:9", 'group name "g" is already used'),
    ("system-count", """\
job "x" {
  type = "system"
  group "g" {
    count = 3
    task "t" { driver = "docker" }
  }
}
""", "4:5", "one allocation per node"),
    ("system-reschedule", """\
job "x" {
  type = "system"
  reschedule {
    attempts = 1
  }
  group "g" { task "t" { driver = "docker" } }
}
""", "3:3", "cannot have a reschedule block"),
    ("batch-update", """\
job "x" {
  type = "batch"
  update {
    max_parallel = 2
  }
  group "g" { task "t" { driver = "docker" } }
}
""", "3:3", "cannot have an update block"),
    # --- group --------------------------------------------------------------------------------
    ("count-negative", """\
job "x" {
  group "g" {
    count = -1
    task "t" { driver = "docker" }
  }
}
""", "3:5", "count -1 is negative"),
    ("no-tasks", """\
job "x" {
  group "g" {
    count = 1
  }
}
""", "2:3", "has no tasks"),
    ("duplicate-task", """\
job "x" {
  group "g" {
    task "t" { driver = "docker" }
    task "t" { driver = "exec" }
  }
}
""", "4:10", 'task name "t" is already used'),
    ("only-lifecycle-tasks", """\
job "x" {
  group "g" {
    task "t" {
      driver = "docker"
      lifecycle {
        hook = "prestart"
      }
    }
  }
}
""", "2:3", "add a main task"),
    ("ephemeral-disk", """\
job "x" {
  group "g" {
    ephemeral_disk {
      size = 5
    }
    task "t" { driver = "docker" }
  }
}
""", "4:7", "use 10 or more"),
    # --- network ------------------------------------------------------------------------------
    ("network-mode", """\
job "x" {
  group "g" {
    network {
      mode = "overlay"
    }
    task "t" { driver = "docker" }
  }
}
""", "4:7", 'network mode "overlay" is not known'),
    ("duplicate-port-label", """\
job "x" {
  group "g" {
    network {
      port "http" {}
      port "http" { static = 8080 }
    }
    task "t" { driver = "docker" }
  }
}
""", "5:12", 'port label "http" is declared twice'),
    ("duplicate-static-port", """\
job "x" {
  group "g" {
    network {
      port "a" { static = 8080 }
      port "b" {
        static = 8080
      }
    }
    task "t" { driver = "docker" }
  }
}
""", "6:9", 'static port 8080 is already used by port "a"'),
    ("static-port-range", """\
job "x" {
  group "g" {
    network {
      port "a" {
        static = 70000
      }
    }
    task "t" { driver = "docker" }
  }
}
""", "5:9", "use 1 to 65535"),
    ("port-to-range", """\
job "x" {
  group "g" {
    network {
      mode = "bridge"
      port "a" {
        to = -5
      }
    }
    task "t" { driver = "docker" }
  }
}
""", "6:9", "maps to -5"),
    ("ignore-collision-bridge", """\
job "x" {
  group "g" {
    network {
      mode = "bridge"
      port "a" {
        static           = 8080
        ignore_collision = true
      }
    }
    task "t" { driver = "docker" }
  }
}
""", "7:9", "only works in host mode"),
    ("hostname", """\
job "x" {
  group "g" {
    network {
      mode     = "bridge"
      hostname = "not_a_host!"
    }
    task "t" { driver = "docker" }
  }
}
""", "5:7", "not a valid DNS name"),
    # --- services and checks ------------------------------------------------------------------
    ("service-port-label", """\
job "x" {
  group "api" {
    network {
      mode = "bridge"
    }
    service {
      name = "count-api"
      port = "http"
    }
    task "t" { driver = "docker" }
  }
}
""", "8:7", 'port "http" is not a port label of group "api"'),
    ("service-name", """\
job "x" {
  group "g" {
    service {
      name = "bad_name"
      port = "8080"
    }
    task "t" { driver = "docker" }
  }
}
""", "4:7", "not a valid DNS label"),
    ("check-type", """\
job "x" {
  group "g" {
    service {
      port = "8080"
      check {
        type     = "ping"
        interval = "10s"
        timeout  = "2s"
      }
    }
    task "t" { driver = "docker" }
  }
}
""", "6:9", 'check type "ping" is not supported'),
    ("http-check-path", """\
job "x" {
  group "g" {
    service {
      port = "8080"
      check {
        type     = "http"
        path     = "http://example.com/health"
        interval = "10s"
        timeout  = "2s"
      }
    }
    task "t" { driver = "docker" }
  }
}
""", "7:9", "must be relative"),
    ("check-interval", """\
job "x" {
  group "g" {
    service {
      port = "8080"
      check {
        type     = "http"
        path     = "/health"
        interval = "500ms"
        timeout  = "2s"
      }
    }
    task "t" { driver = "docker" }
  }
}
""", "8:9", "1s or more"),
    ("script-check-command", """\
job "x" {
  group "g" {
    task "t" {
      driver = "docker"
      service {
        port = "8080"
        check {
          type     = "script"
          interval = "10s"
          timeout  = "2s"
        }
      }
    }
  }
}
""", "7:9", "needs a command"),
    ("check-address-mode-auto", """\
job "x" {
  group "g" {
    service {
      port = "8080"
      check {
        type         = "tcp"
        address_mode = "auto"
        interval     = "10s"
        timeout      = "2s"
      }
    }
    task "t" { driver = "docker" }
  }
}
""", "7:9", 'cannot use address_mode = "auto"'),
    ("unnamed-checks", """\
job "x" {
  group "g" {
    service {
      port = "8080"
      check {
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
      check {
        type     = "tcp"
        interval = "30s"
        timeout  = "2s"
      }
    }
    task "t" { driver = "docker" }
  }
}
""", "10:7", "more than one check without a name"),
    # --- connect ------------------------------------------------------------------------------
    ("connect-host-network", """\
job "x" {
  group "api" {
    network {
      mode = "host"
    }
    service {
      name = "count-api"
      port = "9001"
      connect {
        sidecar_service {}
      }
    }
    task "t" { driver = "docker" }
  }
}
""", "4:7", 'network mode "host" cannot carry connect service "count-api"'),
    ("connect-no-network", """\
job "x" {
  group "api" {
    service {
      name = "count-api"
      port = "9001"
      connect {
        sidecar_service {}
      }
    }
    task "t" { driver = "docker" }
  }
}
""", "2:3", "needs exactly one network"),
    ("connect-in-task", """\
job "x" {
  group "api" {
    network {
      mode = "bridge"
    }
    task "t" {
      driver = "docker"
      service {
        name = "count-api"
        port = "9001"
        connect {
          sidecar_service {}
        }
      }
    }
  }
}
""", "11:9", "only allowed in group services"),
    ("connect-empty", """\
job "x" {
  group "api" {
    network {
      mode = "bridge"
    }
    service {
      name = "count-api"
      port = "9001"
      connect {}
    }
    task "t" { driver = "docker" }
  }
}
""", "9:7", "connect block is empty"),
    ("connect-uppercase-group", """\
job "x" {
  group "API" {
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
    task "t" { driver = "docker" }
  }
}
""", "2:9", "must be lowercase"),
    ("tcp-check-on-sidecar", """\
job "x" {
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
      check {
        type     = "tcp"
        interval = "10s"
        timeout  = "2s"
      }
    }
    task "t" { driver = "docker" }
  }
}
""", "13:9", "a tcp check cannot work on connect service"),
    ("duplicate-upstream", """\
job "x" {
  group "dash" {
    network {
      mode = "bridge"
    }
    service {
      name = "dash"
      port = "9002"
      connect {
        sidecar_service {
          proxy {
            upstreams {
              destination_name = "count-api"
              local_bind_port  = 8080
            }
            upstreams {
              destination_name = "other"
              local_bind_port  = 8080
            }
          }
        }
      }
    }
    task "t" { driver = "docker" }
  }
}
""", "18:15", "upstream listener 127.0.0.1:8080 is already used"),
    # --- task ---------------------------------------------------------------------------------
    ("task-name-alloc", """\
job "x" {
  group "g" {
    task "alloc" { driver = "docker" }
  }
}
""", "3:10", 'cannot be named "alloc"'),
    ("driver-missing", """\
job "x" {
  group "g" {
    task "t" {
      user = "nobody"
    }
  }
}
""", "3:5", "task has no driver"),
    ("lifecycle-hook", """\
job "x" {
  group "g" {
    task "main" { driver = "docker" }
    task "t" {
      driver = "docker"
      lifecycle {
        hook = "prerun"
      }
    }
  }
}
""", "7:9", 'lifecycle hook "prerun" is not known'),
    ("kill-timeout-progress", """\
job "x" {
  group "g" {
    task "t" {
      driver       = "docker"
      kill_timeout = "20m"
    }
  }
}
""", "5:7", "longer than the group progress_deadline"),
    ("resources-cpu-and-cores", """\
job "x" {
  group "g" {
    task "t" {
      driver = "docker"
      resources {
        cpu   = 500
        cores = 2
      }
    }
  }
}
""", "7:9", "cpu or cores, not both"),
    ("resources-memory", """\
job "x" {
  group "g" {
    task "t" {
      driver = "docker"
      resources {
        memory = 4
      }
    }
  }
}
""", "6:9", "at least 10"),
    ("resources-disk", """\
job "x" {
  group "g" {
    task "t" {
      driver = "docker"
      resources {
        disk = 100
      }
    }
  }
}
""", "6:9", "ephemeral_disk"),
    ("logs-over-disk", """\
job "x" {
  group "g" {
    ephemeral_disk {
      size = 50
    }
    task "t" {
      driver = "docker"
      logs {
        max_files = 10
      }
    }
  }
}
""", "8:7", "less than the group ephemeral_disk size of 50 MB"),
    ("template-escape", """\
job "x" {
  group "g" {
    task "t" {
      driver = "docker"
      template {
        data        = "x"
        destination = "../../etc/passwd"
      }
    }
  }
}
""", "7:9", "escapes the allocation directory"),
    ("template-env-signal", """\
job "x" {
  group "g" {
    task "t" {
      driver = "docker"
      template {
        data        = "x"
        destination = "local/env"
        env         = true
        change_mode = "signal"
      }
    }
  }
}
""", "8:9", 'cannot use change_mode = "signal"'),
    # --- policies -----------------------------------------------------------------------------
    ("restart-mode", """\
job "x" {
  group "g" {
    restart {
      mode = "retry"
    }
    task "t" { driver = "docker" }
  }
}
""", "4:7", 'restart mode "retry" is not known'),
    ("restart-not-fit", """\
job "x" {
  group "g" {
    restart {
      attempts = 10
      delay    = "1m"
      interval = "5m"
    }
    task "t" { driver = "docker" }
  }
}
""", "6:7", "do not fit in an interval of 5m"),
    ("reschedule-delay-job-level", """\
job "x" {
  reschedule {
    delay = "1s"
  }
  group "g" { task "t" { driver = "docker" } }
  group "h" { task "t" { driver = "docker" } }
}
""", "3:5", "reschedule delay 1s is too short"),
    ("update-auto-promote", """\
job "x" {
  group "g" {
    update {
      auto_promote = true
    }
    task "t" { driver = "docker" }
  }
}
""", "4:7", "needs canaries"),
    # --- placement ----------------------------------------------------------------------------
    ("constraint-operator", """\
job "x" {
  constraint {
    attribute = "${attr.kernel.name}"
    operator  = "~="
    value     = "linux"
  }
  group "g" { task "t" { driver = "docker" } }
}
""", "4:5", 'constraint operator "~=" is not known'),
    ("constraint-regexp", """\
job "x" {
  group "g" {
    constraint {
      attribute = "${node.unique.name}"
      regexp    = "([a-z"
    }
    task "t" { driver = "docker" }
  }
}
""", "5:7", "does not compile"),
    ("constraint-semver", """\
job "x" {
  constraint {
    attribute = "${attr.consul.version}"
    operator  = "semver"
    value     = ">= one"
  }
  group "g" { task "t" { driver = "docker" } }
}
""", "5:5", "is not a version constraint"),
    ("affinity-weight", """\
job "x" {
  group "g" {
    affinity {
      attribute = "${node.datacenter}"
      value     = "dc1"
      weight    = 0
    }
    task "t" { driver = "docker" }
  }
}
""", "6:7", "cannot be 0"),
    ("spread-sum", """\
job "x" {
  group "g" {
    spread {
      attribute = "${node.datacenter}"
      target "dc1" {
        percent = 70
      }
      target "dc2" {
        percent = 50
      }
    }
    task "t" { driver = "docker" }
  }
}
""", "3:5", "add up to 120%"),
    ("task-distinct-hosts", """\
job "x" {
  group "g" {
    task "t" {
      driver = "docker"
      constraint {
        distinct_hosts = true
      }
    }
  }
}
""", "6:9", "cannot be used in a task constraint"),
]


def problems_of(text: str) -> list:
    with pytest.raises(JobspecError) as info:
        load(text, FILE)
    return info.value.problems


@pytest.mark.parametrize("text,where,fragment", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_invalid_job(text, where, fragment):
    problems = problems_of(text)
    listing = "\n".join(str(p) for p in problems)
    hits = [p for p in problems if str(p.pos) == f"{FILE}:{where}" and fragment in p.message]
    assert hits, f"expected {FILE}:{where} with {fragment!r}, got:\n{listing}"
    assert all(p.severity == "error" for p in hits)


def test_case_ids_are_unique_and_enough():
    ids = [c[0] for c in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 40


def test_all_problems_reported_together_in_file_order():
    text = """\
job "x" {
  priority = 101
  group "g" {
    count = -2
    task "t" {
      resources {
        memory = 1
      }
    }
  }
}
"""
    problems = problems_of(text)
    assert [str(p.pos) for p in problems] == [f"{FILE}:2:3", f"{FILE}:4:5", f"{FILE}:5:5", f"{FILE}:7:9"]
    assert str(problems[1]) == f'{FILE}:4:5: group "g" > count: count -2 is negative: use 0 or more'


def test_a_valid_job_loads_with_only_warnings():
    text = """\
job "x" {
  group "g" {
    network {
      hostname = "web"
    }
    task "t" {
      driver = "docker"
      config { image = "redis:7" }
    }
  }
}
"""
    loaded = load(text, FILE)
    assert [str(w.pos) for w in loaded.warnings] == [f"{FILE}:4:7"]
    assert "no effect in host mode" in loaded.warnings[0].message


@pytest.mark.parametrize("config, line, fragment", [
    ('config {\n      image = "redis"\n      portz = ["db"]\n    }', 5, 'unknown docker config key "portz"'),
    ('config {\n      command = "redis"\n    }', 5, 'the docker driver needs config { image = ... }'),
    ('config {\n      image = "redis"\n      privileged = "yes"\n    }', 5, 'docker config "privileged" must be a boolean'),
    ('config {\n      image = "redis"\n      mount {\n        source = "x"\n      }\n    }', 5,
     'a docker mount needs a "target"'),
])
def test_driver_config_is_checked_at_validation(config, line, fragment):
    text = f'job "x" {{\n  group "g" {{\n    task "t" {{\n      driver = "docker"\n    {config}\n    }}\n  }}\n}}\n'
    with pytest.raises(JobspecError) as e:
        load(text, FILE)
    (p,) = e.value.problems
    assert str(p.pos) == f"{FILE}:{line}:5" and fragment in p.message, str(p)
