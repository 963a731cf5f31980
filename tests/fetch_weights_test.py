#!/usr/bin/env python3
"""The weights Job verifies what it downloaded against the Hub's own digests before it writes SHA256SUMS: a file
whose sha256 (LFS) or git blob id (small files) differs, a file missing, or one the Hub does not list fails the
Job; a revision that is not a full commit id is refused. No network: the Hub's file list is faked."""
import hashlib
import os
import sys
import tempfile
import types
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "docker"))
import fetch_weights  # noqa: E402

WEIGHTS = b"\x01\x02" * 1000
CONFIG = b'{"hidden_size": 3072}\n'


def lfs(name, content):
    return types.SimpleNamespace(rfilename=name, blob_id="0" * 40,
                                 lfs={"size": len(content), "sha256": hashlib.sha256(content).hexdigest(),
                                      "pointer_size": 134})


def git(name, content):
    blob = hashlib.sha1(f"blob {len(content)}\0".encode() + content).hexdigest()
    return types.SimpleNamespace(rfilename=name, blob_id=blob, lfs=None)


class FetchWeightsTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name
        self.write("model-00001-of-00001.safetensors", WEIGHTS)
        self.write("config.json", CONFIG)
        self.siblings = [lfs("model-00001-of-00001.safetensors", WEIGHTS), git("config.json", CONFIG),
                         git("README.md", b"not downloaded"), git("sub/config.json", b"not top level")]

    def tearDown(self):
        self.tmp.cleanup()

    def write(self, name, content):
        with open(os.path.join(self.dir, name), "wb") as f:
            f.write(content)

    def test_files_that_match_the_hub_are_summed(self):
        expected = fetch_weights.expected_files(self.siblings)
        self.assertEqual(sorted(expected), ["config.json", "model-00001-of-00001.safetensors"])
        sums, problems = fetch_weights.verify(self.dir, expected)
        self.assertEqual(problems, [])
        self.assertEqual(sums["model-00001-of-00001.safetensors"], hashlib.sha256(WEIGHTS).hexdigest())
        self.assertEqual(sums["config.json"], hashlib.sha256(CONFIG).hexdigest())

    def test_a_changed_lfs_file_fails(self):
        self.write("model-00001-of-00001.safetensors", WEIGHTS[:-1] + b"\x00")
        _, problems = fetch_weights.verify(self.dir, fetch_weights.expected_files(self.siblings))
        self.assertEqual(len(problems), 1)
        self.assertIn("model-00001-of-00001.safetensors: sha256", problems[0])
        self.assertIn(f"differs from the Hub's {hashlib.sha256(WEIGHTS).hexdigest()}", problems[0])

    def test_a_changed_git_file_fails(self):
        self.write("config.json", b'{"hidden_size": 2048}\n')
        _, problems = fetch_weights.verify(self.dir, fetch_weights.expected_files(self.siblings))
        self.assertEqual(len(problems), 1)
        self.assertIn("config.json: git-blob", problems[0])

    def test_missing_and_unlisted_files_fail(self):
        os.remove(os.path.join(self.dir, "config.json"))
        self.write("extra.json", b"{}")
        _, problems = fetch_weights.verify(self.dir, fetch_weights.expected_files(self.siblings))
        self.assertEqual(sorted(problems), ["config.json: listed by the Hub but not downloaded",
                                            "extra.json: downloaded but not listed by the Hub at this revision"])

    def test_a_file_without_a_digest_cannot_be_verified(self):
        bare = types.SimpleNamespace(rfilename="tokenizer.model", blob_id=None, lfs=None)
        with self.assertRaisesRegex(ValueError, "tokenizer.model"):
            fetch_weights.expected_files([bare])

    def test_only_a_full_commit_is_a_revision(self):
        self.assertIsNone(fetch_weights.check_revision("0123456789abcdef0123456789abcdef01234567"))
        for revision in ["main", "", "v1.0", "0123456", "0123456789ABCDEF0123456789ABCDEF01234567"]:
            self.assertIn("40 hex digits", fetch_weights.check_revision(revision), revision)


if __name__ == "__main__":
    unittest.main()
