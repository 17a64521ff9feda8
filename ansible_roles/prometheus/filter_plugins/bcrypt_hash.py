"""`bcrypt_hash`: the bcrypt hash of a password for Prometheus's web config file.

    {{ prometheus_web_password | bcrypt_hash(previous_hash) }}

Returns `previous_hash` when it already matches the password (so a run with the same
password leaves the file, and Prometheus, untouched), else a new hash with a fresh salt.
Runs on the controller with the `bcrypt` package (a dependency of mlops-assets)."""

from ansible.errors import AnsibleFilterError


def bcrypt_hash(password, previous=""):
    try:
        import bcrypt
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise AnsibleFilterError("bcrypt_hash needs the bcrypt Python package on the controller (pip install bcrypt)") from exc
    secret = str(password).encode()
    if previous:
        try:
            if bcrypt.checkpw(secret, str(previous).encode()):
                return str(previous)
        except ValueError:
            pass  # not a bcrypt hash: make a new one
    return bcrypt.hashpw(secret, bcrypt.gensalt(rounds=12)).decode()


class FilterModule:
    def filters(self):
        return {"bcrypt_hash": bcrypt_hash}
