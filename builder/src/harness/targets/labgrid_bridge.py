"""kiln's bridge to labgrid, run by `kiln test --target labgrid:ENV` with the
Python that runs labgrid (its API drives the target: labgrid has no command
that powers a local environment's target and keeps its console).

    bridge.py deploy ENV   check ENV is for this image; run its deploy hook,
                           the shell command of the option `kiln-deploy`
    bridge.py run ENV      open the console, power-cycle the target, say
                           `kiln-labgrid-bridge: powered on` on stderr, then copy the console to
                           stdout until stdin closes (kiln is done) or the
                           console ends; power off
    bridge.py off ENV      power the target off

The image comes in the environment: KILN_IMAGE, KILN_IMAGE_DIR, KILN_KERNEL,
KILN_INITRD, KILN_CMDLINE, KILN_IMAGE_DIGEST, and the same as LG_KILN_* for
labgrid's `!template`. The target is `main`, or KILN_LABGRID_ROLE. Messages
go to stderr. Exit status: 0, 1 when labgrid failed, 2 when ENV is unusable.
"""

import os
import select
import subprocess
import sys

# kiln waits for this line on stderr before it reads the console.
POWERED_ON = "powered on"


def say(msg):
    print(f"kiln-labgrid-bridge: {msg}", file=sys.stderr, flush=True)


def fail(msg, code=2):
    say(msg)
    sys.exit(code)


def load(path):
    try:
        from labgrid import Environment
    except ImportError as e:
        fail(f"{sys.executable} cannot import labgrid ({e}); install labgrid for it")
    try:
        env = Environment(path)
    except Exception as e:  # labgrid's config errors have no common base
        fail(f"{path}: {e}")
    options = env.config.data.get("options") or {}
    want = options.get("kiln-image-digest")
    have = os.environ.get("KILN_IMAGE_DIGEST")
    if want and have and want != have:
        fail(
            f"{path} boots the image {options.get('kiln-image', '?')} ({want}), "
            f"not {os.environ.get('KILN_IMAGE', '?')} ({have}); write an environment "
            "for this image with `kiln labgrid-env`"
        )
    return env, options


def target(env, path):
    role = os.environ.get("KILN_LABGRID_ROLE", "main")
    t = env.get_target(role)
    if t is None:
        fail(f"{path} has no target '{role}'")
    return t


def deploy(env, options):
    hook = options.get("kiln-deploy")
    if not hook:
        return 0
    code = subprocess.call(hook, shell=True, cwd=env.config.base)
    if code != 0:
        say(f"the deploy hook `{hook}` failed (exit status {code})")
        return 1
    return 0


def power_off(power):
    try:
        power.off()
    except Exception as e:  # a QEMU that powered itself off has no monitor left
        say(f"power off: {e!r}")


def run(env, path):
    from pexpect import TIMEOUT

    t = target(env, path)
    console = t.get_driver("ConsoleProtocol")
    power = t.get_driver("PowerProtocol")
    out = sys.stdout.buffer
    stdin = sys.stdin.fileno()
    try:
        power.cycle()
        say(POWERED_ON)
        while True:
            ready, _, _ = select.select([stdin], [], [], 0)
            if ready and not os.read(stdin, 4096):
                break  # kiln closed our input: the run is over
            try:
                data = console.read(size=1, timeout=0.2)
            except TIMEOUT:
                continue
            if not data:
                say("the console ended")
                break
            out.write(data)
            out.flush()
    finally:
        power_off(power)
        try:
            env.cleanup()
        except Exception as e:
            say(f"cleanup: {e!r}")
    return 0


def off(env, path):
    power_off(target(env, path).get_driver("PowerProtocol"))
    return 0


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("deploy", "run", "off"):
        fail("usage: bridge.py deploy|run|off ENV")
    mode, path = sys.argv[1], sys.argv[2]
    env, options = load(path)
    try:
        if mode == "deploy":
            return deploy(env, options)
        if mode == "run":
            return run(env, path)
        return off(env, path)
    except SystemExit:
        raise
    except Exception as e:
        say(f"labgrid failed: {e!r}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
