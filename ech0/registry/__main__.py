"""``python -m ech0.registry {register,list,promote,rollback,history,package,verify} ...``"""

import sys

from ech0.registry.cli import main

sys.exit(main())
