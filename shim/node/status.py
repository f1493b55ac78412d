"""`wasm-shim node status`: what is installed on the node, as its install record and containerd's config say.

`config_as_installed` (the DaemonSet's readiness, `status --check`) is true while containerd's config holds our
table as the install merged it; the operator's other edits of the file do not matter. `config_unchanged` says
whether the file is byte for byte as the last install left it.
"""

from __future__ import annotations

import hashlib

from .containerd_config import RuntimeTable, table_present
from .distributions import InstallError, detect
from .record import Record
from .session import Session


def status(s: Session, record: Record | None) -> dict[str, object]:
    result: dict[str, object] = {"installed": record is not None}
    try:
        layout = detect(s.host.probe(), layout=s.o.layout, containerd_config=s.o.containerd_config,
                        config_version=s.o.config_version, handler=s.o.handler)
        result["layout"] = layout.name
        result["config_path"] = layout.config_path
        result["config_version"] = layout.config_version
    except InstallError as exc:
        result["layout_error"] = str(exc)
    if record is not None:
        result["version"] = record.version
        current = s.host.read(record.config_path)
        result["config_unchanged"] = current is not None and \
            hashlib.sha256(current).hexdigest() == record.installed_sha256
        merged = record.config_edit.merge
        table = merged.table if merged is not None else \
            RuntimeTable(record.config_version, config_path=record.options_path).render()
        result["config_as_installed"] = current is not None and table_present(current.decode("utf-8", "replace"),
                                                                              table)
        result["bin_link"] = record.bin_link
    return result
