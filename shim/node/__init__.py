"""Putting the shim on a Kubernetes node and taking it off again (`wasm-shim node`, `wasm-shim bundle`).

- `layout`: which containerd layout a host root has, and the config edit the install makes (pure, over bytes).
- `installer`: the I/O around it: bundle copy, config write with backup, restart through the host's init,
  rollback, the lock, the state file that lets uninstall put every byte back.
- `report`: the node label, annotation and events (the `kubernetes` client, imported only there).
- `bundle`: building the self-contained bundle directory (interpreter, libraries, our code, component runner).

Nothing here is imported by the shim binary or the daemon.
"""
