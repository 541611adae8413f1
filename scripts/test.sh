#!/usr/bin/env bash
# The whole test suite, stage by stage, stopping at the first failure.
# Prints how long each stage took, so slow stages are visible.
# Usage: scripts/test.sh [stage ...]   stages: bootstrap lint syntax docs sanity pytest mutation molecule
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
export PATH="$repo/.venv/bin:$PATH"
export ANSIBLE_CONFIG="$repo/ansible.cfg"
export PY_COLORS=0 NO_COLOR=1 ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0

stage_bootstrap() { bash scripts/bootstrap.sh; }

stage_lint() {
    yamllint --strict . &&
    ansible-lint --offline -q &&
    ruff check . &&
    for script in scripts/*.sh scripts/forge molecule/image/*.sh molecule/image/stack/*.sh .ci/run; do
        bash -n "$script" || { echo "shell syntax error in $script"; return 1; }
    done &&
    for vault in inventories/*/group_vars/*/vault.yml; do
        [ -e "$vault" ] || continue
        head -c 14 "$vault" | grep -q '^$ANSIBLE_VAULT' || { echo "$vault is not encrypted: ansible-vault encrypt $vault"; return 1; }
    done
}

stage_syntax() {
    local rc=0 inventory
    for inventory in inventories/*/; do
        ansible-inventory -i "$inventory" --list >/dev/null || { echo "inventory $inventory does not parse"; rc=1; }
        for playbook in playbooks/*.yml; do
            ansible-playbook -i "$inventory" --syntax-check "$playbook" >/dev/null ||
                { echo "syntax error in $playbook with $inventory"; rc=1; }
        done
    done
    return $rc
}

stage_docs() {
    local rc=0 module
    for path in library/*.py; do
        module=$(basename "$path" .py)
        out=$(ansible-doc -M library "$module" 2>&1) || { echo "$out"; rc=1; continue; }
        grep -q "EXAMPLES" <<<"$out" || { echo "ansible-doc $module: no EXAMPLES section"; rc=1; }
        grep -q "RETURN VALUES" <<<"$out" || { echo "ansible-doc $module: no RETURN section"; rc=1; }
        # ansible-doc prints warnings for docs it cannot fully parse.
        grep -qi "\[WARNING\]" <<<"$out" && { echo "ansible-doc $module warned:"; grep -i warning <<<"$out"; rc=1; }
    done
    return $rc
}

# ansible-test judges the modules as Galaxy users get them: the infer.forge collection
# (scripts/build_collection.py) built in a scratch directory, every sanity test that
# runs without containers, zero errors and no ignores (a tests/sanity/ignore-2.19.txt
# would be copied in, each line saying why). ansible-test installs each test's pinned tools into its own venv under
# $HOME/.ansible/test; HOME points into .cache so those venvs are reused across runs
# and nothing lands in the user's home.
stage_sanity() {
    local home="$repo/.cache/ansible-test" scratch rc pip_version cache
    pip_version=$(python -c 'import types
from ansible_test._internal.python_requirements import get_venv_packages
print(get_venv_packages(types.SimpleNamespace(version="3.11"))["pip"])') || return 1
    cache="$home/.ansible/test/cache"
    mkdir -p "$cache" || return 1
    # ansible-test bootstraps pip into its venvs with a get-pip script from
    # ci-files.testing.ansible.com, which may be out of reach; it takes a cached
    # script first, and tests/sanity/get_pip.py does the same from PyPI's pip wheel.
    cp tests/sanity/get_pip.py "$cache/get_pip_${pip_version//./_}.py" || return 1
    if ! compgen -G "$cache/pip-$pip_version-*.whl" >/dev/null; then
        pip download -q --disable-pip-version-check --no-deps --only-binary :all: "pip==$pip_version" -d "$cache" ||
            return 1
    fi
    scratch=$(mktemp -d)
    python scripts/build_collection.py "$scratch/ansible_collections/infer/forge" >/dev/null &&
        (cd "$scratch/ansible_collections/infer/forge" &&
            env -u ANSIBLE_CONFIG HOME="$home" ansible-test sanity --python 3.11 --color no) &&
        sanity_on_debian13 "$scratch" "$cache" "$pip_version"
    rc=$?
    rm -rf "$scratch"
    return $rc
}

# The Barman host runs Debian 13's Python 3.13, where forge_pitr and the engine run: the same
# sanity tests (compile, import, pylint, validate-modules, ...) again under 3.13, in the local
# Debian 13 image, with the same ansible-core from PyPI. The image has no ensurepip, so pip comes
# from the wheel ansible-test's cache holds; PyPI is reached with the host's CA bundle.
sanity_on_debian13() {
    local scratch=$1 cache=$2 pip_version=$3 version
    version=$(python -c 'import ansible; print(ansible.__version__)') || return 1
    mkdir -p "$scratch/home/.ansible/test" && cp -r "$cache" "$scratch/home/.ansible/test/" || return 1
    echo "--- ansible-test sanity --python 3.13 (in infer-forge-debian13:latest)"
    docker run --rm --network bridge -v "$scratch:/sanity" \
        -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
        -e PIP_CERT=/etc/ssl/certs/ca-certificates.crt -e PIP_DISABLE_PIP_VERSION_CHECK=1 \
        infer-forge-debian13:latest sh -ec "
            python3 -m venv --without-pip /tmp/venv
            /tmp/venv/bin/python /sanity/home/.ansible/test/cache/pip-$pip_version-py3-none-any.whl/pip install -q \
                ansible-core==$version
            cd /sanity/ansible_collections/infer/forge
            HOME=/sanity/home /tmp/venv/bin/ansible-test sanity --python 3.13 --venv --color no"
}

# FORGE_TESTS_MAY_SKIP is for a few tests by hand; make test never lets a test skip.
stage_pytest() {
    env -u FORGE_TESTS_MAY_SKIP python -m pytest -q -p no:cacheprovider -n 2 --dist loadfile \
        --junitxml="$repo/.cache/test-logs/pytest.xml" tests
}

# Breaks each core promise in a scratch copy (tests/mutants.py) and fails when
# the tests named for it still pass. Runs after pytest, whose report must show each
# mutant's tests green on the real code (or the mutant is an ERROR, not a kill).
stage_mutation() {
    local report="$repo/.cache/test-logs/pytest.xml"
    if [ -f "$report" ]; then  # this run's pytest stage wrote it (each run removes an older one)
        python scripts/mutation_check.py --jobs 2 --passed-in "$report"
    else
        python scripts/mutation_check.py --jobs 2 --baseline
    fi
}

# A scenario whose platforms name their `image` runs once (e2e and compose: Debian 13);
# every other one runs on Debian 12 and on Debian 13 (name@12, name@13; MOLECULE_DEBIAN).
pinned_scenarios() {
    local d all
    all=$(for d in $(ls molecule); do
        [ -f "molecule/$d/molecule.yml" ] && grep -q '^ *image:' "molecule/$d/molecule.yml" && echo "$d"
    done)
    { grep -x e2e <<<"$all"; grep -vx e2e <<<"$all"; } || true
}

role_scenarios() {
    local d
    for d in $(ls molecule); do
        [ -f "molecule/$d/molecule.yml" ] && ! grep -q '^ *image:' "molecule/$d/molecule.yml" && echo "$d@12 $d@13"
    done
}

molecule_lane() {
    local entry scenario debian started
    for entry in "$@"; do
        scenario=${entry%@*}
        debian=12
        [ "$entry" = "$scenario" ] || debian=${entry#*@}
        started=$SECONDS
        echo "--- molecule scenario: $entry"
        MOLECULE_DEBIAN=$debian molecule test -s "$scenario" 2>&1 | sed -u "s/^/[$entry] /"
        [ "${PIPESTATUS[0]}" -eq 0 ] || { echo "--- molecule scenario $entry failed"; return 1; }
        echo "--- molecule scenario $entry passed in $((SECONDS - started)) s"
    done
}

# Two lanes side by side (MOLECULE_JOBS=1 for one): the scenarios spend much of their
# time waiting on containers. The pinned ones (e2e, the longest, first) take one lane,
# the roles' scenarios on both Debians the other; a scenario's two runs share a lane,
# since they use the same container names. MOLECULE_SCENARIOS="a b@13" picks entries.
stage_molecule() {
    local chosen first_lane second_lane
    if [ -n "${MOLECULE_SCENARIOS:-}" ]; then
        read -r -a chosen <<<"$MOLECULE_SCENARIOS"
        molecule_lane "${chosen[@]}"
        return
    fi
    read -r -a first_lane <<<"$(pinned_scenarios | tr '\n' ' ')"
    read -r -a second_lane <<<"$(role_scenarios | tr '\n' ' ')"
    if [ "${MOLECULE_JOBS:-2}" -lt 2 ]; then
        molecule_lane "${first_lane[@]}" "${second_lane[@]}"
        return
    fi
    molecule_lane "${first_lane[@]}" &
    local first=$!
    molecule_lane "${second_lane[@]}" &
    local rest=$! rc=0
    wait "$first" || rc=1
    wait "$rest" || rc=1
    return $rc
}

# Each stage's output also goes to .cache/test-logs/<stage>.log. When a stage fails,
# its failure lines are repeated after the summary: a CI page often shows only the
# last lines, and the two Molecule lanes interleave theirs.
why_it_failed() {
    grep -E 'fatal: \[|FAILED|^(\[[A-Za-z0-9_@-]+\] )?E {3}|failed=[1-9]|scenario [A-Za-z0-9_@-]+ failed|not killed|^[A-Z]{1,4}[0-9]{3,4} |^Found [0-9]+ error| (error|warning) +|^[a-z-]+\[[a-z-]+\]: |^Failed: [0-9]+ failure' "$1" |
        grep -v -E 'failed=0|ignore_errors|# ignored$' | tail -n 12 | cut -c 1-400
}

stages=("$@")
[ ${#stages[@]} -gt 0 ] || stages=(bootstrap lint syntax docs sanity pytest mutation molecule)
logs="$repo/.cache/test-logs"
mkdir -p "$logs"
rm -f "$logs/pytest.xml"  # the mutation stage takes it as its baseline only from this run
summary=()
status=0
failed_log=
for stage in "${stages[@]}"; do
    echo "=== stage: $stage"
    started=$SECONDS
    "stage_$stage" 2>&1 | tee "$logs/$stage.log"
    if [ "${PIPESTATUS[0]}" -eq 0 ]; then
        summary+=("$(printf '%-10s PASS %5d s' "$stage" $((SECONDS - started)))")
    else
        summary+=("$(printf '%-10s FAIL %5d s' "$stage" $((SECONDS - started)))")
        status=1
        failed_log="$logs/$stage.log"
        break
    fi
done
echo
echo "=== summary (stage, result, wall time)"
printf '%s\n' "${summary[@]}"
passed=$(printf '%s\n' "${summary[@]}" | grep -c ' PASS ')
echo "stages: $passed passed, $status failed"
if [ $status -ne 0 ]; then
    echo "stopped at the first failing stage; scroll up to its output, or read $failed_log"
    echo "=== its failure lines (the last 12)"
    why_it_failed "$failed_log"
fi
exit $status
