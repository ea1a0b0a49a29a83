"""A throw-away single-node Slurm for tests: munged, slurmctld and slurmd on localhost, in a temp dir.

Nothing system-wide is touched: the cluster has its own munge key and socket, its own slurm.conf
(``SLURM_CONF`` in :meth:`LocalSlurm.env`), free TCP ports, state and spool folders, so it cannot
collide with a real Slurm or with another test run on the same machine. It runs without systemd or
cgroups (``proctrack/linuxproc``, ``task/none``) and without slurmdbd (use ``scontrol show job``,
not ``sacct``). Every daemon is a child process of the test; :meth:`LocalSlurm.stop` cancels the
jobs and ends the daemons by PID.

    reason = ensure_slurm()            # None, or why Slurm cannot be had here (tests skip)
    with LocalSlurm(tmp_dir) as cluster:
        subprocess.run(["sbatch", ...], env=cluster.env())
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
INSTALL_SCRIPT = REPO / "slurm" / "install_test_slurm.sh"
SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def _which(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def missing_binaries() -> list[str]:
    return [
        b
        for b in ("sbatch", "scontrol", "squeue", "scancel", "sinfo", "slurmctld", "slurmd", "munged", "munge")
        if _which(b) is None
    ]


def ensure_slurm() -> str | None:
    """Install Slurm when it is missing and we can (root + apt-get); returns a skip reason or None.

    Raises RuntimeError when we are root with apt-get and the install still fails: on the CI
    machine these tests must run, so a broken install is an error, not a skip.
    """
    if os.geteuid() != 0:
        return "the test cluster needs root (slurmd launches the jobs, munged runs as the munge user)"
    if not missing_binaries():
        return None
    if shutil.which("apt-get") is None:
        return f"Slurm is not installed ({', '.join(missing_binaries())} missing) and there is no apt-get"
    result = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True)
    if result.returncode == 3:
        return result.stderr.strip() or "slurm/install_test_slurm.sh cannot install Slurm here"
    if result.returncode != 0 or missing_binaries():
        raise RuntimeError(f"installing Slurm failed (exit {result.returncode}):\n{result.stdout}\n{result.stderr}")
    return None


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalSlurm:
    """One slurmctld + one slurmd (node = short hostname, all its CPUs) + a private munged."""

    def __init__(self, workdir: Path, cpus: int | None = None, partition: str = "debug"):
        self.dir = Path(workdir)
        # at least two slots so array tasks run side by side (config_overrides lets a 1-CPU machine claim 2)
        self.cpus = cpus or max(2, os.cpu_count() or 1)
        self.partition = partition
        self.node = socket.gethostname().split(".")[0]
        self.procs: dict[str, subprocess.Popen] = {}
        # munged runs as `munge` and must traverse to its socket: keep it out of pytest's 0700 tmp dirs
        self.munge_dir = Path(tempfile.mkdtemp(prefix="nl-test-munge-"))
        self.conf = self.dir / "slurm.conf"
        self.start_seconds = 0.0

    # ------------------------------------------------------------ lifecycle
    def __enter__(self) -> LocalSlurm:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def env(self, **extra: str) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf), **extra}

    def start(self, timeout: float = 60) -> None:
        t0 = time.time()
        for sub in ("state", "spool", "log"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self._start_munge()
        ctld_port, slurmd_port = _free_ports(2)
        self.conf.write_text(self._slurm_conf(ctld_port, slurmd_port))
        log = self.dir / "log"
        self.procs["slurmctld"] = subprocess.Popen(
            [_which("slurmctld"), "-D", "-i", "-f", str(self.conf)],
            env=self.env(),
            stdout=open(log / "slurmctld.stdout", "w"),
            stderr=subprocess.STDOUT,
        )
        self.procs["slurmd"] = subprocess.Popen(
            [_which("slurmd"), "-D", "-f", str(self.conf), "-N", self.node],
            env=self.env(),
            stdout=open(log / "slurmd.stdout", "w"),
            stderr=subprocess.STDOUT,
        )
        while True:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} while starting:\n{self.logs_tail()}")
            state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env(), capture_output=True, text=True)
            if state.returncode == 0 and state.stdout.strip() == "idle":
                break
            if time.time() - t0 > timeout:
                raise RuntimeError(
                    f"the Slurm node did not become idle in {timeout:.0f} s "
                    f"(sinfo: {state.stdout.strip() or state.stderr.strip()}):\n{self.logs_tail()}"
                )
            time.sleep(0.2)
        self.start_seconds = time.time() - t0

    def _start_munge(self) -> None:
        munge = pwd.getpwnam("munge")
        run = self.munge_dir / "run"
        run.mkdir()
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        for path, mode in ((self.munge_dir, 0o755), (run, 0o755), (key, 0o400)):
            os.chown(path, munge.pw_uid, munge.pw_gid)
            os.chmod(path, mode)
        self.munge_socket = run / "munge.socket"
        cmd = [
            _which("munged"),
            "--foreground",
            f"--socket={self.munge_socket}",
            f"--key-file={key}",
            f"--pid-file={run / 'munged.pid'}",
            f"--log-file={self.munge_dir / 'munged.log'}",
            f"--seed-file={self.munge_dir / 'munged.seed'}",
        ]
        # munged refuses to run as root: drop to the munge user (a direct child, so we can reap it)
        as_munge = dict(user=munge.pw_uid, group=munge.pw_gid, extra_groups=[]) if os.geteuid() == 0 else {}
        self.procs["munged"] = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **as_munge)
        deadline = time.time() + 10
        while not self.munge_socket.exists():
            if self.procs["munged"].poll() is not None or time.time() > deadline:
                err = self.procs["munged"].stderr.read().decode() if self.procs["munged"].poll() is not None else ""
                raise RuntimeError(f"munged did not start: {err}")
            time.sleep(0.05)

    def _slurm_conf(self, ctld_port: int, slurmd_port: int) -> str:
        d = self.dir
        return f"""# written by tests/slurm_harness.py
ClusterName=nltest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=socket={self.munge_socket},cred_expire=5
StateSaveLocation={d}/state
SlurmdSpoolDir={d}/spool
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=60
KillWait=5
MinJobAge=3600
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory=1000 State=UNKNOWN
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""

    def stop(self) -> None:
        """Cancel every job, wait for them to end, then stop slurmd, slurmctld and munged by PID."""
        if self.procs.get("slurmctld") and self.procs["slurmctld"].poll() is None:
            subprocess.run(["scancel", "--full", "--user", "root"], env=self.env(), capture_output=True)
            deadline = time.time() + 20
            while time.time() < deadline:
                q = subprocess.run(
                    ["squeue", "-h", "-t", "RUNNING,COMPLETING,CONFIGURING", "-o", "%i"],
                    env=self.env(),
                    capture_output=True,
                    text=True,
                )
                if q.returncode != 0 or not q.stdout.strip():
                    break
                time.sleep(0.3)
        for name in ("slurmd", "slurmctld", "munged"):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        shutil.rmtree(self.munge_dir, ignore_errors=True)

    # ------------------------------------------------------------ helpers for tests
    def logs_tail(self, n: int = 20) -> str:
        out = []
        for path in sorted((self.dir / "log").glob("*")):
            lines = path.read_text(errors="replace").splitlines()[-n:]
            out.append(f"--- {path.name}\n" + "\n".join(lines))
        return "\n".join(out)

    def run(self, *cmd: str, check: bool = True, **env: str) -> subprocess.CompletedProcess:
        result = subprocess.run(list(cmd), env=self.env(**env), capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): {result.stderr}{result.stdout}")
        return result

    def job_records(self, job_id: str) -> list[dict[str, str]]:
        from neuron_lib.slurm import parse_scontrol

        return parse_scontrol(self.run("scontrol", "-o", "show", "job", str(job_id)).stdout)
