"""Every citation of a repository file leads to a file of this repository.

A user has a clone of this repository and the papers; comments, docstrings,
gin files, Markdown pages and notebooks must not send them anywhere else.
The test reads every .py, .gin, .md and .ipynb file that git tracks, plus
the untracked files git does not ignore (work in progress is checked too).
In a .py file only comments and docstrings (bare string statements) are
read: a string in code is data, such as the file names a test writes into a
temporary folder, not a citation. Gin files, pages and notebooks are read
whole. It reports `file:line: what` for each of these:

1. A path that starts at the repository root, i.e. a run of path characters
   that begins with one of the top-level folders `docs/`, `configs/`,
   `scripts/`, `modeling/`, `official/`, `dataloaders/`, `tests/`,
   `notebooks/` or `.ci/` and ends with a file extension (.py, .gin, .md,
   .ipynb, .json, .yaml, .txt, .sh), or `.ci/run`. It must name an existing
   file; a glob (`configs/smoke/*.gin`) must match at least one file.
   A path only counts when it starts the run: `gs://BUCKET/configs/x.gin`
   or another project's `tensorflow/models/official/vision/...` are not
   paths of this repository (the folder name follows a `/`), and user data
   such as `runs/...`, `data/...`, `exports/...` or `gs://...` lives under
   no folder of the list above. Text with placeholders (`<task>`, `{name}`)
   stops the run before an extension, so it is not a citation either.
2. A relative link in a Markdown page, `[text](target)`, resolved against
   the page's folder (web links, `mailto:` and `#anchors` are skipped).
3. Any mention of the project's internal notes that live outside the
   repository: the reference, design and search notes files by name (in
   capitals, as they are written), or a path into the sibling `shared`
   folder. Cite the paper (title, section, table) or a `docs/` page instead.
"""

import fnmatch
import io
import os
import re
import subprocess
import tokenize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

EXTENSIONS = (".py", ".gin", ".md", ".ipynb")
SKIP_DIRS = {".git", ".venv", "data", "runs", "__pycache__", "build",
             "node_modules"}
TOP_FOLDERS = ("docs", "configs", "scripts", "modeling", "official",
               "dataloaders", "tests", "notebooks", r"\.ci")
FILE_EXTENSIONS = ("py", "gin", "md", "ipynb", "json", "yaml", "txt", "sh")

# Rule 1. The look-behind keeps a folder name that follows a `/`, `.`, `-`,
# `:` or a word character (a URL, another repository's path, a Python module
# path) from starting a citation.
REPO_PATH = re.compile(
    r"(?<![\w./:-])"
    r"((?:%s)/[\w.*/-]*?\.(?:%s)|\.ci/run)"
    r"(?![\w/-])" % ("|".join(TOP_FOLDERS), "|".join(FILE_EXTENSIONS)))

# Rule 2.
MARKDOWN_LINK = re.compile(r"\]\(([^)\s]+)\)")

# Rule 3, spelled in pieces so that this file does not cite them itself.
# A capitalised word alone (a constant, a heading) is not a citation; the
# notes were cited with `.md` or with a section sign.
_REF, _DES, _SEARCH = "REFER" + "ENCE", "DES" + "IGN", "SEARCH" + "_NOTES"
NOTES = re.compile(
    r"\b(?:%s|%s|%s)\.md\b|\b(?:%s|%s)\s*\u00a7|(?:\.\.|/work)/%s\b" % (
        _REF, _DES, _SEARCH, _REF, _DES, "sha" + "red"))


def _repo_files():
  """Tracked files plus untracked, non-ignored ones (relative paths)."""
  try:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True).stdout
    files = [f for f in out.splitlines() if f]
  except (OSError, subprocess.CalledProcessError):
    files = []
    for root, dirs, names in os.walk(REPO):
      dirs[:] = [d for d in dirs if d not in SKIP_DIRS
                 and not d.endswith(".egg-info")]
      for name in names:
        files.append(os.path.relpath(os.path.join(root, name), REPO))
  # A file deleted in the working tree but still tracked is not there.
  return sorted(f for f in files if os.path.isfile(os.path.join(REPO, f)))


def _exists(path):
  """Whether `path` (relative to the repository, maybe a glob) exists."""
  if any(c in path for c in "*?["):
    return any(fnmatch.fnmatch(f, path) for f in ALL_FILES)
  return os.path.exists(os.path.join(REPO, path))


ALL_FILES = _repo_files()


def _prose_lines(relpath, text):
  """(line number, text) of the parts of a file that can hold a citation."""
  if not relpath.endswith(".py"):
    return list(enumerate(text.splitlines(), start=1))
  lines = []
  try:
    tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline)
              if t.type != tokenize.NL]
  except (tokenize.TokenError, SyntaxError):  # A file being edited: read all.
    return list(enumerate(text.splitlines(), start=1))
  statement_start = (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
                     tokenize.ENCODING)
  previous = None  # The last token that was not a comment.
  for i, tok in enumerate(tokens):
    if tok.type == tokenize.COMMENT:
      lines.append((tok.start[0], tok.string))
      continue
    if tok.type == tokenize.STRING and (
        previous is None or previous.type in statement_start
        or previous.string == ";"):
      j = i + 1
      while j < len(tokens) and tokens[j].type == tokenize.COMMENT:
        j += 1
      following = tokens[j] if j < len(tokens) else None
      if following is None or following.type in (
          tokenize.NEWLINE, tokenize.ENDMARKER) or following.string == ";":
        for offset, line in enumerate(tok.string.splitlines()):
          lines.append((tok.start[0] + offset, line))
    previous = tok
  return sorted(lines)


def _problems_in(relpath, text):
  problems = []
  folder = os.path.dirname(relpath)
  is_markdown = relpath.endswith(".md")
  for lineno, line in _prose_lines(relpath, text):
    where = "%s:%d" % (relpath, lineno)
    for match in NOTES.finditer(line):
      problems.append("%s: cites %r, a file users do not have"
                      % (where, match.group(0)))
    for match in REPO_PATH.finditer(line):
      path = match.group(1)
      if not _exists(path):
        problems.append("%s: cites %s, which is not in the repository"
                        % (where, path))
    if is_markdown:
      for match in MARKDOWN_LINK.finditer(line):
        target = match.group(1).split("#")[0]
        if (not target or re.match(r"^[a-z][a-z0-9+.-]*:", target)
            or target.startswith("/")):
          continue
        resolved = os.path.normpath(os.path.join(folder, target))
        if resolved.startswith(".."):
          problems.append("%s: links %s, outside the repository"
                          % (where, target))
        elif not _exists(resolved):
          problems.append("%s: links %s, which is not in the repository"
                          % (where, target))
  return problems


def find_problems():
  problems = []
  for relpath in ALL_FILES:
    if not relpath.endswith(EXTENSIONS):
      continue
    if set(relpath.split("/")[:-1]) & SKIP_DIRS:
      continue
    with open(os.path.join(REPO, relpath), encoding="utf-8",
              errors="replace") as f:
      problems.extend(_problems_in(relpath, f.read()))
  return problems


def test_every_cited_repository_file_exists():
  problems = find_problems()
  assert not problems, (
      "%d citation(s) lead outside this repository:\n  %s\nCite a paper "
      "(title, section, table) or a file that is in the repository; facts "
      "from no paper go in a docs/ page." % (len(problems),
                                             "\n  ".join(problems)))


def test_the_rules_catch_what_they_must():
  """The scanner itself: what is and is not a citation.

  Missing names are written with `%s` so that this file cites none itself.
  """
  notes, no = "REFER" + "ENCE", "no_such"
  flagged = _problems_in("modeling/%s.py" % no, "\n".join([
      "# Block specs (%s.md \u00a71)." % notes,          # 1: notes file
      "# Anchors (%s \u00a74)." % notes,                 # 2: notes, bare
      "# See configs/backbones/%s.gin." % no,            # 3: missing file
      "# Every configs/%s/*.gin file." % no,             # 4: empty glob
      "# docs/%s.md says why." % no,                     # 5: missing page
      "# Do read ../%s/papers." % ("sha" + "red"),       # 6: outside
  ]))
  assert [p.split(":")[1] for p in flagged] == ["1", "2", "3", "4", "5", "6"]
  assert not _problems_in("modeling/%s.py" % no, "\n".join([
      "# See configs/backbones/spinenet49.gin and configs/smoke/*.gin.",
      "# tests/test_citations.py checks this.",
      "#   --model_dir=gs://BUCKET/runs/spinenet49_coco/configs/x.gin",
      "# runs/exp1/config.gin, data/coco/train-*.tfrecord, exports/m.json",
      "# Model Garden: tensorflow/models/official/vision/ops/anchor.py",
      "# from official.core import trainer; configs/<task>/<name>.gin",
      "# %s = 3  (a constant of that name is no citation)" % notes,
  ]))
  code = "\n".join([
      '"""Docstring citing configs/%s.gin."""' % no,      # 1: docstring
      "def f():",
      '  """A function docstring: docs/%s.md."""' % no,   # 3: docstring
      "  files = {'official/tasks/%s.py': ''}" % no,      # data, not prose
      "  path = ('configs/%s.gin')  # but configs/%s.gin" % (no, no),  # 5
      "  return files, path",
  ])
  assert [p.split(":")[1] for p in _problems_in("tests/x.py", code)] == [
      "1", "3", "5"]
  links = _problems_in("tests/%s.md" % no, "\n".join([
      "[this](test_citations.py) [web](https://example.com/a.md) [top](#top)",
      "[gone](%s.md) [up](../../%s.md)" % (no, no),
  ]))
  assert [p.split(":")[1] for p in links] == ["2", "2"]
