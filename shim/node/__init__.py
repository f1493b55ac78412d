"""Putting the shim on a Kubernetes node and taking it off again (`wasm-shim node`, `wasm-shim bundle`).

- `distributions`: which containerd layout a host root has, and the config edits install and uninstall make (pure).
- `installer`: `wasm-shim node install|uninstall|status`: the lock, the rollback and the report around the
  steps in `install`, `uninstall` and `status`; beneath them `session` (one run), `host` (the host-root view,
  atomic writes), `changes` (each edit with its undo), `prefix` (the directory the installer may own), `record`
  (the install record that lets uninstall remove exactly what install added), `restart` (containerd's restart,
  the wait for CRI), `restart_slots` (how many nodes restart containerd at once), `preflight` (the bundle run on
  the node before anything changes) and `policy_files` (the node's signature policy).
- `report`: the node label, annotation and events (the `kubernetes` client, imported only there and in
  `restart_slots`).
- `build`: building the self-contained bundle directory (interpreter, libraries, our code, component runner);
  `image`: the installer image around it.

Nothing here is imported by the shim binary or the daemon.
"""
