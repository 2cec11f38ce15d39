# Stowage as a Nomad CSI plugin: one stowaged per client node (a system job), serving
# the CSI controller and node services on one socket (a monolith plugin).
#
#   nomad job run deploy/nomad/stowage.nomad.hcl
#
# The client's docker plugin must allow privileged containers and host bind mounts:
#
#   plugin "docker" {
#     config {
#       allow_privileged = true
#       volumes { enabled = true }
#     }
#   }
#
# A volume lives in the pool of the node that created it, while Nomad sends controller
# RPCs (CreateVolume, ControllerPublish) to one of the plugin's controller instances,
# not necessarily that node. On a single client node they coincide; on several, pin
# creation with a topology_request on topology.stowage.dev/node (volume-example.hcl).
#
# No datacenters line: Nomad 1.5 and later default to all datacenters ("*").
job "stowage" {
  type = "system"

  group "node" {
    network {
      port "metrics" {
        static = 9808
        to     = 9808
      }
    }

    # /healthz runs the same check as the CSI Probe call.
    service {
      provider = "nomad"
      name     = "stowage"
      port     = "metrics"

      check {
        type     = "http"
        path     = "/healthz"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "stowaged" {
      driver = "docker"

      config {
        image      = "localhost/stowage/stowaged:0.1.0"
        privileged = true
        ports      = ["metrics"]

        # No --require-controller-publish=false: Nomad calls ControllerPublish before
        # NodeStage for plugins that advertise PUBLISH_UNPUBLISH_VOLUME, as stowaged
        # does, so NodeStage keeps demanding it (the default; on Kubernetes, with
        # attachRequired: false, it is off).
        args = [
          "--endpoint=unix:///csi/csi.sock",
          "--state-dir=/var/lib/stowage",
          "--node-id=${node.unique.name}",
          "--metrics-address=0.0.0.0:9808",
        ]

        # Metadata, the embedded pool image and its mount; rshared so the pool mount
        # lives on the host and outlives a restart of this task.
        mount {
          type   = "bind"
          source = "/var/lib/stowage"
          target = "/var/lib/stowage"

          bind_options {
            propagation = "rshared"
          }
        }

        mount {
          type   = "bind"
          source = "/dev"
          target = "/dev"
        }

        mount {
          type   = "bind"
          source = "/sys"
          target = "/sys"
        }
      }

      # Nomad mounts its plugin directory at mount_dir and expects the socket there as
      # csi.sock: the --endpoint above.
      csi_plugin {
        id        = "stowage"
        type      = "monolith"
        mount_dir = "/csi"
      }

      resources {
        cpu    = 200
        memory = 256
      }
    }
  }
}
