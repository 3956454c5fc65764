from services.common.service import main
from services.ledger.service import setup

if __name__ == "__main__":
    main("ledger", setup)
