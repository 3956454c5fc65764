from services.common.service import main
from services.transfers.service import setup

if __name__ == "__main__":
    main("transfers", setup)
