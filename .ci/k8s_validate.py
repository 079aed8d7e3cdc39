#!/usr/bin/env python3
"""Validates rendered Kubernetes manifests offline.

Built-in kinds go through kubernetes-validate in strict mode (its bundled OpenAPI schemas:
unknown fields are errors). Kinds defined by the CRDs given with --crds (KEDA's) are checked
against the CRD's openAPIV3Schema for the object's version, made strict the same way: an
object schema that lists its properties refuses any other, unless the schema says it keeps
unknown fields.

  k8s_validate.py [--crds DIR] [--kubernetes-version X.Y.Z] FILE...

Prints one line per file with its object counts; exits 1 on the first file with an error,
naming the object and the field.
"""

import argparse
import collections
import copy
import glob
import os
import sys

import jsonschema
import kubernetes_validate
import yaml


def strict(schema):
    """A copy of an OpenAPI v3 schema where objects with listed properties allow no others."""
    schema = copy.deepcopy(schema)

    def walk(node):
        if isinstance(node, dict):
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return schema


def load_crds(directory):
    """{(group/version, kind): strict schema} for every served version of every CRD in DIR."""
    schemas = {}
    for path in sorted(glob.glob(os.path.join(directory, "*.yaml"))):
        with open(path) as f:
            for crd in yaml.safe_load_all(f):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                group = crd["spec"]["group"]
                kind = crd["spec"]["names"]["kind"]
                for version in crd["spec"]["versions"]:
                    if not version.get("served", True):
                        continue
                    schema = version["schema"]["openAPIV3Schema"]
                    schemas[(f"{group}/{version['name']}", kind)] = strict(schema)
    return schemas


def describe(doc):
    meta = doc.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{doc.get('kind', '?')} {ns + '/' if ns else ''}{name}"


def validate_file(path, crds, version):
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if not docs:
        raise SystemExit(f"{path}: no objects")
    counts = collections.Counter()
    errors = []
    for doc in docs:
        key = (doc.get("apiVersion"), doc.get("kind"))
        counts[doc.get("kind", "?")] += 1
        if key in crds:
            validator = jsonschema.Draft7Validator(crds[key])
            for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.path)):
                where = ".".join(str(p) for p in err.path) or "(root)"
                errors.append(f"{describe(doc)}: {where}: {err.message}")
            continue
        if doc.get("apiVersion", "").split("/")[0].endswith(".sh"):
            errors.append(f"{describe(doc)}: no CRD for {key[0]} {key[1]} in --crds")
            continue
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(p) for p in err.path) or "(root)"
            errors.append(f"{describe(doc)}: {where}: {err.message}")
        except kubernetes_validate.SchemaNotFoundError as err:
            errors.append(f"{describe(doc)}: no schema: {err}")
    summary = ", ".join(f"{n} {kind}" for kind, n in sorted(counts.items()))
    if errors:
        for e in errors:
            print(f"{path}: {e}", file=sys.stderr)
        return False, f"{path}: {len(docs)} objects, {len(errors)} errors"
    return True, f"{path}: {len(docs)} objects valid ({summary})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--crds", help="directory of CustomResourceDefinition YAML files")
    parser.add_argument(
        "--kubernetes-version", default=kubernetes_validate.latest_version()
    )
    parser.add_argument("files", nargs="+")
    args = parser.parse_args()
    crds = load_crds(args.crds) if args.crds else {}
    ok = True
    for path in args.files:
        valid, line = validate_file(path, crds, args.kubernetes_version)
        print(line)
        ok = ok and valid
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
