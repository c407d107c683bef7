"""What publishing needs: pyproject.toml's [project] and [tool.comfy] as the Comfy Registry reads them,
the publish workflow (.github/workflows/publish.yml), and a README that names no second copy of the
repository address.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, ".github", "workflows", "publish.yml")

tomllib = pytest.importorskip("tomllib", reason="tomllib needs Python >= 3.11")


def pyproject() -> dict:
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def repository() -> str:
    return pyproject()["project"]["urls"]["Repository"]


def test_project_table_has_what_the_registry_requires():
    project = pyproject()["project"]
    # the registry's node id: < 100 characters, alphanumerics with single - _ . between them
    assert re.fullmatch(r"[A-Za-z][A-Za-z0-9]*([-_.][A-Za-z0-9]+)*", project["name"]) and len(project["name"]) < 100
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"]), "the registry wants a three-part semantic version"
    assert project["description"].strip()
    assert project["license"] in ({"file": "LICENSE"}, {"text": "MIT"})
    assert os.path.isfile(os.path.join(ROOT, "LICENSE"))
    assert re.fullmatch(r"https://github\.com/[\w.-]+/[\w.-]+", repository())


def test_tool_comfy_has_what_the_registry_requires():
    comfy = pyproject()["tool"]["comfy"]
    assert re.fullmatch(r"[a-z0-9][a-z0-9-]*", comfy["PublisherId"]), "PublisherId: the registry publisher's id"
    assert comfy["DisplayName"].strip()
    assert re.fullmatch(r">=\d+\.\d+\.\d+", comfy["requires-comfyui"])
    # the icon is served from this repository, and is a square image the registry accepts
    owner_name = repository().removeprefix("https://github.com/")
    prefix = f"https://raw.githubusercontent.com/{owner_name}/main/"
    assert comfy["Icon"].startswith(prefix), f"Icon must be a file of {repository()}: {comfy['Icon']}"
    icon = os.path.join(ROOT, comfy["Icon"].removeprefix(prefix))
    with open(icon, "rb") as f:
        header = f.read(24)
    assert header[:8] == b"\x89PNG\r\n\x1a\n", f"{icon} is not a PNG"
    width, height = int.from_bytes(header[16:20], "big"), int.from_bytes(header[20:24], "big")
    assert width == height <= 400, (width, height)


def test_readme_names_the_repository_only_through_pyproject():
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    owner_name = repository().removeprefix("https://github.com/")
    assert owner_name not in readme, "the repository address lives in pyproject.toml's [project.urls] only"
    assert "[project.urls]" in readme


@pytest.mark.host
def test_comfyui_reads_the_same_configuration(host):
    """ComfyUI's own pyproject parser (comfy_config, shared with comfy-cli's publisher) sees the same values."""
    from comfy_config.config_parser import extract_node_configuration

    config = extract_node_configuration(ROOT)  # the pack folder, as ComfyUI passes it
    data = pyproject()
    assert config.project.name == data["project"]["name"] and config.project.version == data["project"]["version"]
    assert config.project.urls.repository == repository()
    assert config.tool_comfy.publisher_id == data["tool"]["comfy"]["PublisherId"]
    assert config.tool_comfy.display_name == data["tool"]["comfy"]["DisplayName"]
    assert config.tool_comfy.icon == data["tool"]["comfy"]["Icon"]
    assert config.project.supported_comfyui_version == data["tool"]["comfy"]["requires-comfyui"]


# ------------------------------------------------------------------------------------------ publish.yml

def workflow() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (ComfyUI's requirements bring it)")
    with open(WORKFLOW, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _triggers(wf):
    return wf.get("on", wf.get(True))  # YAML 1.1 reads the bare key `on` as true


def _steps(wf):
    (job,) = wf["jobs"].values()
    return job["steps"]


def test_publish_workflow_runs_on_a_pyproject_change_on_main():
    on = _triggers(workflow())
    assert on["push"]["branches"] == ["main"] and on["push"]["paths"] == ["pyproject.toml"]
    assert "workflow_dispatch" in on and "pull_request" not in on


def test_publish_workflow_uses_the_registry_action_with_the_secret():
    (publish,) = [s for s in _steps(workflow()) if str(s.get("uses", "")).startswith("Comfy-Org/publish-node-action@")]
    assert publish["with"]["personal_access_token"] == "${{ secrets.REGISTRY_ACCESS_TOKEN }}"
    assert publish["if"] == "steps.version.outputs.publish == 'true'"


def _run_version_check(tmp_path, before: str | None, now: str, event="push") -> str:
    """The workflow's version step, run in a throw-away repository whose last commit moves the
    version from ``before`` (None: the first commit) to ``now``."""
    (step,) = [s for s in _steps(workflow()) if s.get("id") == "version"]
    script = step["run"].replace("${{ github.event_name }}", event)
    repo = tmp_path / "repo"
    repo.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)  # the runner's python3 has tomllib; so does this one
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", GITHUB_OUTPUT=str(tmp_path / "out"),
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")

    def git(*args):
        subprocess.run(["git", *args], cwd=repo, env=env, check=True, capture_output=True)

    git("init", "-q")
    for version in ([before] if before else []) + [now]:
        (repo / "pyproject.toml").write_text(f'[project]\nname = "x"\nversion = "{version}"\n')
        git("add", "pyproject.toml")
        git("commit", "-q", "--allow-empty", "-m", version)
    # GitHub runs `shell: bash` steps as bash --noprofile --norc -eo pipefail
    subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=repo, env=env,
                   check=True, capture_output=True)
    return (tmp_path / "out").read_text().strip()


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("bash") is None, reason="needs git and bash")
@pytest.mark.parametrize("before,now,event,expected", [
    ("0.1.0", "0.2.0", "push", "publish=true"),
    ("0.1.0", "0.1.0", "push", "publish=false"),
    (None, "0.1.0", "push", "publish=true"),
    ("0.1.0", "0.1.0", "workflow_dispatch", "publish=true"),
])
def test_publish_workflow_publishes_only_a_new_version(tmp_path, before, now, event, expected):
    assert _run_version_check(tmp_path, before, now, event) == expected
