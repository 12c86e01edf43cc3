"""`revproxy template list` and `revproxy template show NAME`: the shipped service templates."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from revproxy.config.templates import templates


def register(sub: argparse._SubParsersAction[Any]) -> None:
    """Add this module's subcommands to the `revproxy` parser."""
    parser = sub.add_parser(
        "template",
        help="list the service templates or show one",
        description="Service templates set every key a product needs; a service uses one "
        'with template = "NAME". See docs/templates.md.',
    )
    actions = parser.add_subparsers(dest="template_command", required=True)
    listing = actions.add_parser("list", help="the templates and what each is for")
    listing.set_defaults(func=cmd_list)
    show = actions.add_parser("show", help="a template's settings and where they come from")
    show.add_argument("name", help="template name, as `revproxy template list` prints it")
    show.set_defaults(func=cmd_show)


def cmd_list(args: argparse.Namespace) -> int:
    known = templates()
    width = max(len(name) for name in known)
    for template in known.values():
        print(f"{template.name:<{width}}  {template.description}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    known = templates()
    template = known.get(args.name)
    if template is None:
        print(
            f'revproxy: there is no template named "{args.name}"; known templates: '
            + ", ".join(known),
            file=sys.stderr,
        )
        return 2
    sys.stdout.write(template.text)
    return 0
