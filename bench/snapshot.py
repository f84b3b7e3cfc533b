"""savevm/loadvm cost: seconds and stored bytes for 16 and 128 MiB of RAM.

    python bench/snapshot.py

For each RAM size: boot the compute image, give it a 4 MiB working set of
pseudo-random data (as a guest that loaded data would have), run it a while,
then savevm ("first"), run 50,000 more instructions (a small change), savevm
again ("second"), and loadvm both.  Prints wall seconds and the bytes each
save added to the store.
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

from emud import migration
from emud.chardev import RingBackend
from emud.loader import load_elf
from emud.machine import Machine
from emud.snapshots import SnapshotStore

ROOT = Path(__file__).resolve().parent.parent


def timed(action: object) -> float:
    start = time.perf_counter()
    action()  # type: ignore[operator]
    return time.perf_counter() - start


def bench(ram_mib: int, store_dir: Path) -> None:
    machine = Machine(RingBackend(), ram_size=ram_mib << 20)
    machine.load(load_elf(ROOT / "images" / "compute.elf"))
    working_set = random.Random(7).randbytes(4 << 20)
    machine.bus.write_bytes(machine.ram.base + (8 << 20), working_set)
    machine.run_until_poweroff(max_insns=2_000_000)
    store = SnapshotStore(store_dir / f"bench-{ram_mib}.sqlite")
    save1 = timed(lambda: migration.savevm(machine, store, "first"))
    machine.run_until_poweroff(max_insns=50_000)
    save2 = timed(lambda: migration.savevm(machine, store, "second"))
    load1 = timed(lambda: migration.loadvm(machine, store, "first"))
    load2 = timed(lambda: migration.loadvm(machine, store, "second"))
    first, second = store.info("first"), store.info("second")
    print(f"{ram_mib:4d} MiB  savevm first  {save1 * 1e3:7.1f} ms  {first.stored_bytes:9d} bytes "
          f"({first.ram_pages} RAM pages)")
    print(f"{ram_mib:4d} MiB  savevm second {save2 * 1e3:7.1f} ms  {second.stored_bytes:9d} bytes "
          f"({second.stored_bytes / first.stored_bytes:.1%} of the first; "
          f"{second.shared_pages} pages shared)")
    print(f"{ram_mib:4d} MiB  loadvm first  {load1 * 1e3:7.1f} ms")
    print(f"{ram_mib:4d} MiB  loadvm second {load2 * 1e3:7.1f} ms")
    store.close()


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        for size in (16, 128):
            bench(size, Path(tmp))


if __name__ == "__main__":
    main()
