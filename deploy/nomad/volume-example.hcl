# An example Stowage volume for Nomad:
#
#   nomad volume create deploy/nomad/volume-example.hcl
#
# then claim it from a job with
#
#   volume "data" {
#     type            = "csi"
#     source          = "stowage-example"
#     access_mode     = "single-node-writer"
#     attachment_mode = "file-system"
#   }
#
# Parameters are the StorageClass parameters of the Kubernetes manifests: kind (dir |
# loop | image), fsType (ext4 | xfs, loop only), layers and overlay (image only),
# replicas and replicationInterval.
id        = "stowage-example"
name      = "stowage-example"
type      = "csi"
plugin_id = "stowage"

capacity_min = "1GiB"

# Stowage volumes live on one node: only single-node access modes.
capability {
  access_mode     = "single-node-writer"
  attachment_mode = "file-system"
}

parameters {
  kind   = "loop"
  fsType = "ext4"
}

# On a cluster of several nodes, name the node whose pool should hold the volume:
#
# topology_request {
#   required {
#     topology {
#       segments {
#         "topology.stowage.dev/node" = "client-1"
#       }
#     }
#   }
# }
